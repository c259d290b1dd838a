"""Short-lived, per-dataset access tokens signed with ECDSA P-256 and SHA-256 (ES256).

A token is ``base64url(payload) + "." + base64url(signature)`` where the payload is compact
JSON ``{"sub": user, "ds": dataset id, "exp": unix seconds}`` and the signature is the fixed
64-byte ``r || s`` that JWS uses for ES256.

Public-key signatures rather than a shared secret, so that only the Hypha bridge can mint
tokens: it keeps the private key, while each dataset server holds only the public key, which
the operator can deploy from a ConfigMap without reading any Secret. A compromised server
(or a leaked ConfigMap) lets nobody forge a token. No JWT library: there is exactly one
algorithm, nothing in the token chooses how it is checked, and a key of any other type or
curve is refused when it is loaded, minted with or verified against.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

# The key types of the one algorithm, for callers' annotations.
PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_ALGORITHM = ec.ECDSA(hashes.SHA256())
# P-256 scalars are 32 bytes; r and s are each padded to that width, as JWS (RFC 7518) does.
_SCALAR_BYTES = 32
_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"


class TokenError(ValueError):
    """The token cannot be trusted: malformed, forged, expired, or for another dataset."""


@dataclass(frozen=True)
class Claims:
    user: str
    dataset: str
    expires: int


def mint(
    private_key: PrivateKey, *, user: str, dataset: str, ttl_seconds: int, now: float | None = None
) -> str:
    """A token letting ``user`` prove their identity to ``dataset``'s server for ``ttl_seconds``."""
    _p256_private_key(private_key)
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    issued = time.time() if now is None else now
    claims = {"sub": user, "ds": dataset, "exp": int(issued + ttl_seconds)}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    r, s = decode_dss_signature(private_key.sign(payload, _ALGORITHM))
    signature = r.to_bytes(_SCALAR_BYTES, "big") + s.to_bytes(_SCALAR_BYTES, "big")
    return f"{_encode(payload)}.{_encode(signature)}"


def verify(public_key: PublicKey, token: str, *, dataset: str, now: float | None = None) -> Claims:
    """The token's claims if ``public_key``'s private key signed it, unexpired, for ``dataset``."""
    _p256_public_key(public_key)
    payload, signature = _split(token)
    if not _signed_by(public_key, payload, signature):
        raise TokenError("invalid token: bad signature")
    claims = _parse(payload)
    current = time.time() if now is None else now
    if current >= claims.expires:
        expired_at = datetime.fromtimestamp(claims.expires, UTC).isoformat()
        raise TokenError(f"token expired at {expired_at}")
    if claims.dataset != dataset:
        raise TokenError(f"token is for dataset {claims.dataset!r}, not {dataset!r}")
    return claims


def load_private_key(pem: bytes | str) -> PrivateKey:
    """The signing key in ``pem``: SEC1 (``EC PRIVATE KEY``, what helm's ``genPrivateKey
    "ecdsa"`` writes) or unencrypted PKCS#8 (``PRIVATE KEY``), on curve P-256."""
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # TypeError: encrypted
        raise ValueError(
            f"not an unencrypted PEM private key (SEC1 'EC PRIVATE KEY' or PKCS#8): {exc}"
        ) from None
    return _p256_private_key(key)


def load_public_key(pem: bytes | str) -> PublicKey:
    """The token key in ``pem``: a ``PUBLIC KEY`` or an X.509 ``CERTIFICATE``, on curve P-256.

    A certificate is only a container for the key (what cert-manager and PKI tooling hand
    out): its dates, issuer and extensions are not checked.
    """
    data = _as_bytes(pem)
    try:
        if _CERTIFICATE_MARKER in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key or certificate: {exc}") from None
    return _p256_public_key(key)


def generate_private_key() -> PrivateKey:
    """A fresh P-256 signing key, for tests and development tools."""
    return ec.generate_private_key(ec.SECP256R1())


def public_key_pem(private_key: PrivateKey) -> str:
    """The PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) that checks ``private_key``'s tokens."""
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def private_key_pem(private_key: PrivateKey) -> str:
    """``private_key`` as unencrypted PKCS#8 PEM, readable by :func:`load_private_key`."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _p256_private_key(key: object) -> PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise _not_p256(key, "private")


def _p256_public_key(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise _not_p256(key, "public")


def _not_p256(key: object, kind: str) -> ValueError:
    found = type(key).__name__
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        found += f" on curve {key.curve.name}"
    return ValueError(f"the token {kind} key must be an EC P-256 {kind} key, not {found}")


def _signed_by(public_key: PublicKey, payload: bytes, signature: bytes) -> bool:
    # Any other length is not ES256, whatever DER or padding it might decode as.
    if len(signature) != 2 * _SCALAR_BYTES:
        return False
    r = int.from_bytes(signature[:_SCALAR_BYTES], "big")
    s = int.from_bytes(signature[_SCALAR_BYTES:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), payload, _ALGORITHM)
    except InvalidSignature:
        return False
    return True


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


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
