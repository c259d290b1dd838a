"""Short-lived, per-dataset access tokens signed with a shared HMAC key.

A token is ``base64url(payload) + "." + base64url(HMAC-SHA256(key, payload))`` where the
payload is compact JSON ``{"sub": user, "ds": dataset id, "exp": unix seconds}``. HMAC rather
than a JWT library: the bridge and the server share one secret, there is exactly one
algorithm, and nothing in the token can choose how it is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(ValueError):
    """The token cannot be trusted: malformed, forged, expired, or for another dataset."""


@dataclass(frozen=True)
class Claims:
    user: str
    dataset: str
    expires: int


def mint(key: bytes, *, user: str, dataset: str, ttl_seconds: int, now: float | None = None) -> str:
    """A token letting ``user`` prove their identity to ``dataset``'s server for ``ttl_seconds``."""
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    issued = time.time() if now is None else now
    claims = {"sub": user, "ds": dataset, "exp": int(issued + ttl_seconds)}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return f"{_encode(payload)}.{_encode(_sign(key, payload))}"


def verify(key: bytes, token: str, *, dataset: str, now: float | None = None) -> Claims:
    """The token's claims if ``key`` signed it, it has not expired, and it names ``dataset``."""
    payload, signature = _split(token)
    # Constant-time comparison, so response timing reveals nothing about the right signature.
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise TokenError("invalid token: bad signature")
    claims = _parse(payload)
    current = time.time() if now is None else now
    if current >= claims.expires:
        expired_at = datetime.fromtimestamp(claims.expires, UTC).isoformat()
        raise TokenError(f"token expired at {expired_at}")
    if claims.dataset != dataset:
        raise TokenError(f"token is for dataset {claims.dataset!r}, not {dataset!r}")
    return claims


def load_key(path: Path) -> bytes:
    """The signing key stored in ``path``, without the trailing newline editors and ``echo`` add.

    Only one line ending is removed, so the bridge and the server agree on the key's bytes
    even when it is binary; both should read the key through this function.
    """
    raw = path.read_bytes()
    key = raw[:-2] if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
    if not key:
        raise ValueError(f"signing key file {path} is empty")
    return key


def _sign(key: bytes, payload: bytes) -> bytes:
    # With an empty key anyone could mint valid tokens; refuse rather than sign.
    if not key:
        raise ValueError("the signing key must not be empty")
    return hmac.new(key, payload, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _split(token: str) -> tuple[bytes, bytes]:
    parts = token.split(".")
    # The alphabet is checked first because the decoder silently skips characters outside it.
    if len(parts) != 2 or not all(_BASE64URL.fullmatch(part) for part in parts):
        raise TokenError("malformed token: expected <payload>.<signature> in base64url")
    encoded_payload, encoded_signature = parts
    try:
        return _decode(encoded_payload), _decode(encoded_signature)
    except binascii.Error:
        raise TokenError("malformed token: invalid base64url") from None


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _parse(payload: bytes) -> Claims:
    try:
        data: Any = json.loads(payload)
    except ValueError:
        raise TokenError("malformed token: payload is not JSON") from None
    if not isinstance(data, dict):
        raise TokenError("malformed token: payload is not a JSON object")
    user, dataset, expires = data.get("sub"), data.get("ds"), data.get("exp")
    if not isinstance(user, str) or not user or not isinstance(dataset, str):
        raise TokenError("malformed token: 'sub' and 'ds' must be strings")
    # bool is an int subclass; a payload with "exp": true is a minting bug, not a time.
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise TokenError("malformed token: 'exp' must be an integer")
    return Claims(user=user, dataset=dataset, expires=expires)
