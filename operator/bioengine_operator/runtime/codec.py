"""The wire format between the Hypha bridge and an app's Ray Serve ingress.

msgpack, with NumPy arrays as an extension type that carries dtype, shape and the raw
buffer: arrays pass bit-exact both ways, a 16 MiB array costs one copy per side, and
nothing is unpickled (the bridge must not execute what an app returns). The module is
standalone (msgpack and NumPy only, both in every Ray image) because the operator mounts
it into the app's Ray pods beside the Serve entry point.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np

NDARRAY = 1
CONTENT_TYPE = "application/vnd.bioengine.msgpack"
# A call's dataset tokens (JSON, dataset name → the caller's token), from the bridge to the
# app's ingress, which hands them to ``bioengine.datasets``.
DATASET_TOKENS_HEADER = "X-BioEngine-Dataset-Tokens"
_HEADER_SIZE = struct.Struct("<I")


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be sent; use a numeric dtype")
        header = msgpack.packb([obj.dtype.str, list(obj.shape)])
        data = np.ascontiguousarray(obj).tobytes()
        return msgpack.ExtType(NDARRAY, _HEADER_SIZE.pack(len(header)) + header + data)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode(code: int, payload: bytes) -> Any:
    if code != NDARRAY:
        return msgpack.ExtType(code, payload)
    (size,) = _HEADER_SIZE.unpack_from(payload)
    dtype, shape = msgpack.unpackb(payload[_HEADER_SIZE.size : _HEADER_SIZE.size + size])
    start = _HEADER_SIZE.size + size
    # A copy: the receiver gets a writable array that does not pin the message buffer.
    return np.frombuffer(payload, dtype=np.dtype(dtype), offset=start).reshape(shape).copy()


def dumps(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)  # type: ignore[no-any-return]


def loads(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_decode, raw=False, strict_map_key=False)
