"""The dataset server, against real files in ``tmp_path`` and real HTTP on 127.0.0.1.

In-process servers run on their own event loop in a thread so that the clients can be plain
blocking ones: ``http.client``, which sends request targets byte for byte (so traversal
attempts reach the server un-normalized), and zarr over fsspec's HTTP filesystem. One test
runs the real CLI as a subprocess.

One P-256 signing key is generated per session, as the Hypha bridge would hold it; servers
get only its public key. Metrics are process-wide, so metric tests compare scrapes taken
before and after their own requests.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.__main__ import main
from bioengine_operator.dataserver.app import AccessLogger, build_app
from bioengine_operator.dataserver.manifest import DatasetManifest, load_manifest
from bioengine_operator.local import procs

KEY = tokens.generate_private_key()
PUBLIC_KEY = KEY.public_key()
OTHER_KEY = tokens.generate_private_key()  # a signing key the servers do not trust
# Keys of any kind, to check that only P-256 ones are accepted.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DATASET = "cells-2024"
# 1000 bytes with no repeating 256-byte period, so a misplaced range cannot match by chance.
CONTENT = bytes((i * 37 + i // 256) % 256 for i in range(1000))
NOTES = b"# notes\n"
SECRET = b"outside the dataset"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        target: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, target: str, **kwargs: Any) -> Reply:
        return self.request("GET", target, **kwargs)


def token_for(user: str = "alice", **overrides: Any) -> str:
    options: dict[str, Any] = {"key": KEY, "dataset": DATASET, "ttl_seconds": 300}
    options.update(overrides)
    key = options.pop("key")
    return tokens.mint(key, user=user, **options)


def make_manifest(authorized_users: list[str]) -> DatasetManifest:
    return DatasetManifest.model_validate(
        {
            "id": DATASET,
            "name": "Cells 2024",
            "files": [
                {"path": "blob.bin", "description": "raw bytes", "version": "1.0"},
                {"path": "sub/", "description": "a folder"},
                {"path": "./sub/notes.txt", "description": "notes", "version": "2"},
            ],
            "authorizedUsers": authorized_users,
        }
    )


@contextmanager
def serve(app: web.Application) -> Iterator[Server]:
    """Run ``app`` on a free loopback port in a thread; stop it and join the thread on exit."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, name="dataserver", daemon=True)
    thread.start()
    try:
        yield Server(port=runner.addresses[0][1])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        assert not thread.is_alive()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A dataset with files, a hidden file, a subfolder and symlinks in and out of it."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "inside.txt").write_bytes(SECRET)
    data = tmp_path / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "blob.bin").write_bytes(CONTENT)
    (data / ".zattrs").write_bytes(b'{"scale": 1}')
    (data / "sub" / "notes.txt").write_bytes(NOTES)
    (data / "alias.bin").symlink_to("blob.bin")
    (data / "escape.txt").symlink_to("../secret.txt")
    (data / "escape_dir").symlink_to(tmp_path / "outside")
    (data / "dangling").symlink_to("missing")
    return data


@pytest.fixture
def server(root: Path) -> Iterator[Server]:
    with serve(build_app(root, make_manifest(["alice", "bob"]), PUBLIC_KEY)) as running:
        yield running


@pytest.fixture
def public_server(root: Path) -> Iterator[Server]:
    with serve(build_app(root, make_manifest(["*"]), PUBLIC_KEY)) as running:
        yield running


# --- tokens ------------------------------------------------------------------------------


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _signed(payload: bytes) -> str:
    """A correctly signed token around an arbitrary payload, to test payload validation.

    The signature is encoded as JWS encodes ES256: r and s as 32-byte big-endian integers.
    """
    r, s = decode_dss_signature(KEY.sign(payload, ec.ECDSA(hashes.SHA256())))
    return f"{_encode(payload)}.{_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _tampered() -> str:
    """Bob's payload with Alice's signature: the user was swapped after signing."""
    alice = token_for("alice", now=1000)
    bob = token_for("bob", now=1000)
    return f"{bob.split('.')[0]}.{alice.split('.')[1]}"


def _der_signed() -> str:
    """A valid signature in DER, the other common ECDSA encoding: not what ES256 sends."""
    payload = _decode(token_for(now=1000).split(".")[0])
    der = KEY.sign(payload, ec.ECDSA(hashes.SHA256()))
    return f"{_encode(payload)}.{_encode(der)}"


def test_token_round_trip() -> None:
    now = 1_700_000_000.5
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=60, now=now)
    claims = tokens.verify(PUBLIC_KEY, token, dataset=DATASET, now=now + 59)
    assert claims == tokens.Claims(user="alice", dataset=DATASET, expires=1_700_000_060)


def test_token_format_is_base64url_payload_dot_raw_es256_signature() -> None:
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=60, now=1000)
    encoded_payload, encoded_signature = token.split(".")
    assert "=" not in token
    payload, signature = _decode(encoded_payload), _decode(encoded_signature)
    assert payload == b'{"ds":"cells-2024","exp":1060,"sub":"alice"}'
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    # Raises InvalidSignature unless it is ECDSA P-256 with SHA-256 over the payload bytes.
    PUBLIC_KEY.verify(encode_dss_signature(r, s), payload, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "malformed"),
        ("no-dot-at-all", "malformed"),
        ("a.b.c", "malformed"),
        ("pay load.signature", "malformed"),
        ("eyJ=.abc", "malformed"),
        ("a.bcdef", "malformed"),  # a 1-character base64 group cannot be decoded
        (_signed(b"not json"), "payload is not JSON"),
        (_signed(b"[1, 2]"), "not a JSON object"),
        (_signed(b'{"sub": "alice", "ds": "cells-2024", "exp": "soon"}'), "'exp'"),
        (_signed(b'{"sub": "alice", "ds": "cells-2024", "exp": true}'), "'exp'"),
        (_signed(b'{"ds": "cells-2024", "exp": 2000}'), "'sub'"),
        (token_for(key=OTHER_KEY, now=1000), "bad signature"),
        (_tampered(), "bad signature"),
        (_der_signed(), "bad signature"),
        (f"{token_for(now=1000).split('.')[0]}.{_encode(bytes(64))}", "bad signature"),
        (token_for(dataset="other-dataset", now=1000), "not 'cells-2024'"),
        (token_for(ttl_seconds=60, now=1000 - 60), "expired at 1970-01-01T00:16:40"),
    ],
)
def test_verify_rejects(token: str, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message):
        tokens.verify(PUBLIC_KEY, token, dataset=DATASET, now=1000)


def test_token_is_expired_from_its_exp_second_on() -> None:
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=10, now=1000)
    assert tokens.verify(PUBLIC_KEY, token, dataset=DATASET, now=1009.9).user == "alice"
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(PUBLIC_KEY, token, dataset=DATASET, now=1010)


def test_mint_and_verify_refuse_other_keys_and_mint_a_non_positive_ttl() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256 private key, not ECPrivateKey on curve secp384r1"):
        tokens.mint(p384, user="alice", dataset=DATASET, ttl_seconds=60)
    token = token_for()
    with pytest.raises(ValueError, match="P-256 public key, not ECPublicKey on curve secp384r1"):
        tokens.verify(p384.public_key(), token, dataset=DATASET)
    with pytest.raises(ValueError, match="positive"):
        tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=0)


def _certificate(key: SigningKey) -> str:
    """A self-signed X.509 certificate for ``key``, as PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bioengine-bridge")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _private_pem(key: SigningKey, private_format: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    )


def _public_pem(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_load_private_key_reads_sec1_and_pkcs8() -> None:
    sec1 = _private_pem(KEY, serialization.PrivateFormat.TraditionalOpenSSL)
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")  # what helm's genPrivateKey writes
    pkcs8 = tokens.private_key_pem(KEY)
    assert pkcs8.startswith("-----BEGIN PRIVATE KEY-----")
    for pem in (sec1, sec1.decode(), pkcs8, pkcs8.encode()):
        loaded = tokens.load_private_key(pem)
        assert loaded.private_numbers() == KEY.private_numbers()
        token = tokens.mint(loaded, user="alice", dataset=DATASET, ttl_seconds=60)
        assert tokens.verify(PUBLIC_KEY, token, dataset=DATASET).user == "alice"


def test_load_public_key_reads_a_public_key_and_a_certificate() -> None:
    public = tokens.public_key_pem(KEY)
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    certificate = _certificate(KEY)
    assert certificate.startswith("-----BEGIN CERTIFICATE-----")
    for pem in (public, public.encode(), certificate, certificate.encode()):
        loaded = tokens.load_public_key(pem)
        assert loaded.public_numbers() == PUBLIC_KEY.public_numbers()
        assert tokens.verify(loaded, token_for(), dataset=DATASET).user == "alice"
        with pytest.raises(tokens.TokenError, match="bad signature"):
            tokens.verify(loaded, token_for(key=OTHER_KEY), dataset=DATASET)


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: _private_pem(_rsa_key(), serialization.PrivateFormat.PKCS8), "RSAPrivateKey"),
        (
            lambda: _private_pem(_p384_key(), serialization.PrivateFormat.TraditionalOpenSSL),
            "ECPrivateKey on curve secp384r1",
        ),
        (lambda: _public_pem(KEY), "not an unencrypted PEM private key"),
        (
            lambda: KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            "not an unencrypted PEM private key",
        ),
        (lambda: b"not a key", "not an unencrypted PEM private key"),
    ],
    ids=["rsa", "p384", "public-key", "encrypted", "garbage"],
)
def test_load_private_key_refuses(make_pem: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokens.load_private_key(make_pem())


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: _public_pem(_rsa_key()), "RSAPublicKey"),
        (lambda: _public_pem(_p384_key()), "ECPublicKey on curve secp384r1"),
        (lambda: _certificate(_p384_key()).encode(), "ECPublicKey on curve secp384r1"),
        (lambda: _certificate(_rsa_key()).encode(), "RSAPublicKey"),
        (lambda: tokens.private_key_pem(KEY).encode(), "not a PEM public key or certificate"),
        (lambda: b"not a key", "not a PEM public key or certificate"),
    ],
    ids=["rsa", "p384", "p384-certificate", "rsa-certificate", "private-key", "garbage"],
)
def test_load_public_key_refuses(make_pem: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokens.load_public_key(make_pem())


# --- manifest ----------------------------------------------------------------------------


def test_manifest_accepts_camel_and_snake_case() -> None:
    camel = DatasetManifest.model_validate({"id": "d", "name": "D", "authorizedUsers": ["a"]})
    snake = DatasetManifest.model_validate({"id": "d", "name": "D", "authorized_users": ["a"]})
    assert camel == snake
    assert camel.authorized_users == ["a"]
    assert camel.model_dump(by_alias=True)["authorizedUsers"] == ["a"]


@pytest.mark.parametrize(
    ("authorized", "user", "allowed"),
    [
        (["alice"], "alice", True),
        (["alice"], "bob", False),
        (["alice"], None, False),
        ([], "alice", False),
        ([], None, False),
        (["*"], None, True),
        (["alice", "*"], "anyone", True),
    ],
)
def test_manifest_allows(authorized: list[str], user: str | None, allowed: bool) -> None:
    manifest = DatasetManifest(id="d", name="D", authorized_users=authorized)
    assert manifest.allows(user) is allowed


@pytest.mark.parametrize("suffix", [".json", ".yaml", ""])
def test_load_manifest(tmp_path: Path, suffix: str) -> None:
    data = {"id": "d", "name": "D", "files": [{"path": "a", "version": "1"}], "tags": ["em"]}
    path = tmp_path / f"manifest{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    manifest = load_manifest(path)
    assert manifest.id == "d"
    assert manifest.files[0].version == "1"
    assert manifest.tags == ["em"]


# --- listing and metadata ----------------------------------------------------------------


def test_healthz_needs_no_token(server: Server) -> None:
    reply = server.get("/healthz")
    assert (reply.status, reply.body) == (200, b"ok")


def test_manifest_endpoint_returns_camel_case(server: Server) -> None:
    reply = server.get("/manifest", token=token_for())
    assert reply.status == 200
    assert reply.json() == make_manifest(["alice", "bob"]).model_dump(mode="json", by_alias=True)
    assert reply.json()["authorizedUsers"] == ["alice", "bob"]


@pytest.mark.parametrize("target", ["/files", "/files/", "/files?path=", "/files?path=."])
def test_list_root(server: Server, target: str) -> None:
    reply = server.get(target, token=token_for())
    assert reply.status == 200
    # Symlinks leaving the dataset and dangling ones are not listed; one staying inside is.
    assert reply.json() == {
        "path": "",
        "entries": [
            {
                "name": ".zattrs",
                "path": ".zattrs",
                "type": "file",
                "size": 12,
                "description": "",
                "version": None,
            },
            {
                "name": "alias.bin",
                "path": "alias.bin",
                "type": "file",
                "size": len(CONTENT),
                "description": "",
                "version": None,
            },
            {
                "name": "blob.bin",
                "path": "blob.bin",
                "type": "file",
                "size": len(CONTENT),
                "description": "raw bytes",
                "version": "1.0",
            },
            {
                "name": "sub",
                "path": "sub",
                "type": "directory",
                "description": "a folder",
                "version": None,
            },
        ],
    }


@pytest.mark.parametrize("path", ["sub", "sub/", "./sub"])
def test_list_subdirectory(server: Server, path: str) -> None:
    reply = server.get(f"/files?path={path}", token=token_for())
    assert reply.status == 200
    assert reply.json() == {
        "path": "sub",
        "entries": [
            {
                "name": "deeper",
                "path": "sub/deeper",
                "type": "directory",
                "description": "",
                "version": None,
            },
            {
                "name": "notes.txt",
                "path": "sub/notes.txt",
                "type": "file",
                "size": len(NOTES),
                "description": "notes",
                "version": "2",
            },
        ],
    }


def test_a_recursive_listing_holds_every_file_below_and_nothing_outside(
    server: Server, root: Path
) -> None:
    """``recursive=true``: the files of every folder below (as apps' ``list_files`` reads
    them); a symlink back up the tree is listed once, and nothing leaving the root is."""
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf")
    (root / "sub" / "deeper" / "loop").symlink_to(root / "sub")
    reply = server.get("/files?recursive=true", token=token_for())
    assert reply.status == 200
    assert [e["path"] for e in reply.json()["entries"]] == [
        ".zattrs",
        "alias.bin",
        "blob.bin",
        "sub/deeper/leaf.txt",
        "sub/notes.txt",
    ]
    below = server.get("/files?path=sub&recursive=true", token=token_for()).json()
    assert [e["path"] for e in below["entries"]] == ["sub/deeper/leaf.txt", "sub/notes.txt"]


def test_list_missing_directory_is_404_and_a_file_is_400(server: Server) -> None:
    missing = server.get("/files?path=nope", token=token_for())
    assert missing.status == 404
    assert "error" in missing.json()
    file = server.get("/files?path=blob.bin", token=token_for())
    assert file.status == 400
    assert "not a directory" in file.json()["error"]


# --- downloads ---------------------------------------------------------------------------


def test_download_is_bit_exact_with_metadata_headers(server: Server) -> None:
    reply = server.get("/files/blob.bin", token=token_for())
    assert reply.status == 200
    assert reply.body == CONTENT
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["Content-Length"] == str(len(CONTENT))
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["ETag"]
    assert reply.headers["Last-Modified"]

    notes = server.get("/files/sub/notes.txt", token=token_for())
    assert (notes.status, notes.body) == (200, NOTES)
    assert notes.headers["Content-Type"].startswith("text/plain")


def test_hidden_files_and_inner_symlinks_are_served(server: Server) -> None:
    assert server.get("/files/.zattrs", token=token_for()).body == b'{"scale": 1}'
    assert server.get("/files/alias.bin", token=token_for()).body == CONTENT


def test_etag_revalidation_gives_304(server: Server) -> None:
    etag = server.get("/files/blob.bin", token=token_for()).headers["ETag"]
    reply = server.get("/files/blob.bin", token=token_for(), headers={"If-None-Match": etag})
    assert (reply.status, reply.body) == (304, b"")


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=10-19", 10, 20),
        ("bytes=-5", 995, 1000),
        ("bytes=100-", 100, 1000),
        ("bytes=990-5000", 990, 1000),  # an end past the file is clipped, not refused
    ],
)
def test_range_request(server: Server, header: str, start: int, stop: int) -> None:
    reply = server.get("/files/blob.bin", token=token_for(), headers={"Range": header})
    assert reply.status == 206
    assert reply.body == CONTENT[start:stop]
    assert reply.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(CONTENT)}"
    assert reply.headers["Content-Length"] == str(stop - start)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000"])
def test_unsatisfiable_range_is_416(server: Server, header: str) -> None:
    reply = server.get("/files/blob.bin", token=token_for(), headers={"Range": header})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(CONTENT)}"


def test_head_gives_length_and_no_body(server: Server) -> None:
    reply = server.request("HEAD", "/files/blob.bin", token=token_for())
    assert reply.status == 200
    assert reply.headers["Content-Length"] == str(len(CONTENT))
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.body == b""


def test_compressed_sibling_is_not_substituted(root: Path, server: Server) -> None:
    # aiohttp alone would answer with table.csv.gz for a client accepting gzip.
    (root / "table.csv").write_bytes(b"a,b\n1,2\n")
    (root / "table.csv.gz").write_bytes(b"\x1f\x8b not the csv")
    reply = server.get(
        "/files/table.csv", token=token_for(), headers={"Accept-Encoding": "gzip, br"}
    )
    assert reply.status == 200
    assert reply.body == b"a,b\n1,2\n"
    assert "Content-Encoding" not in reply.headers


@pytest.mark.parametrize("target", ["/files/sub", "/files/sub/", "/files/nope.bin"])
def test_directories_and_missing_files_are_404(server: Server, target: str) -> None:
    reply = server.get(target, token=token_for())
    assert reply.status == 404
    assert reply.json() == {"error": "no such file"}


# --- confinement and read-only -----------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/files/../secret.txt",
        "/files/sub/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/..%2fsecret.txt",
        "/files/sub/..%2F..%2Fsecret.txt",
        "/files/{outside}/secret.txt",
        "/files/escape.txt",
        "/files/escape_dir/inside.txt",
        "/files/dangling",
        "/files/blob.bin%00",
        "/files?path=..",
        "/files?path=%2e%2e",
        "/files?path=sub/../..",
        "/files?path={outside}",
        "/files?path=escape_dir",
    ],
)
def test_paths_outside_the_dataset_are_404(server: Server, root: Path, target: str) -> None:
    reply = server.get(target.format(outside=root.parent), token=token_for())
    assert reply.status == 404
    assert SECRET not in reply.body
    assert b"inside.txt" not in reply.body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize(
    "target", ["/files/blob.bin", "/files/new.txt", "/files", "/manifest", "/healthz", "/x"]
)
def test_other_methods_are_405(server: Server, root: Path, method: str, target: str) -> None:
    reply = server.request(method, target, token=token_for(), body=b"payload")
    assert reply.status == 405
    assert set(reply.headers["Allow"].split(",")) == {"GET", "HEAD"}
    assert "read-only" in reply.json()["error"]
    assert (root / "blob.bin").read_bytes() == CONTENT
    assert not (root / "new.txt").exists()


# --- authentication and authorization ----------------------------------------------------


@pytest.mark.parametrize("target", ["/files/blob.bin", "/files", "/manifest", "/nope"])
def test_no_token_is_401(server: Server, target: str) -> None:
    reply = server.get(target)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert "token is required" in reply.json()["error"]


# Tokens are minted when the test runs, not at collection: a whole suite takes longer than a
# token lives.
@pytest.mark.parametrize(
    ("mint", "message"),
    [
        (lambda: token_for(ttl_seconds=60, now=time.time() - 3600), "expired"),
        (lambda: token_for(key=OTHER_KEY), "bad signature"),
        (lambda: token_for(dataset="other-dataset"), "for dataset 'other-dataset'"),
        (lambda: "garbage", "malformed"),
    ],
    ids=["expired", "other-key", "other-dataset", "garbage"],
)
def test_invalid_token_is_401(server: Server, mint: Callable[[], str], message: str) -> None:
    reply = server.get("/files/blob.bin", token=mint())
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert message in reply.json()["error"]
    assert CONTENT not in reply.body


def test_non_bearer_authorization_is_401(server: Server) -> None:
    reply = server.get("/files/blob.bin", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert reply.status == 401
    assert "Bearer" in reply.json()["error"]


def test_unlisted_user_is_403(server: Server) -> None:
    reply = server.get("/files/blob.bin", token=token_for("mallory"))
    assert reply.status == 403
    assert "'mallory'" in reply.json()["error"]
    assert CONTENT not in reply.body


def test_token_in_query_is_accepted(server: Server) -> None:
    reply = server.get(f"/files/blob.bin?token={token_for('bob')}")
    assert (reply.status, reply.body) == (200, CONTENT)


def test_public_dataset_needs_no_token(public_server: Server) -> None:
    assert public_server.get("/files/blob.bin").body == CONTENT
    assert public_server.get("/files?path=sub").status == 200
    assert public_server.get("/manifest").json()["authorizedUsers"] == ["*"]
    # A token that is presented must still be valid: a bad one is a client error to surface.
    assert public_server.get("/files/blob.bin", token="garbage").status == 401


def test_empty_user_list_admits_nobody(root: Path) -> None:
    with serve(build_app(root, make_manifest([]), PUBLIC_KEY)) as server:
        assert server.get("/files/blob.bin", token=token_for("alice")).status == 403
        assert server.get("/files/blob.bin").status == 401


def test_server_without_a_key_refuses_every_token(root: Path) -> None:
    with serve(build_app(root, make_manifest(["*"]), None)) as server:
        without_token = server.get("/files/blob.bin")
        assert (without_token.status, without_token.body) == (200, CONTENT)
        reply = server.get("/files/blob.bin", token=token_for())
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert "no token key configured" in reply.json()["error"]
        assert CONTENT not in reply.body


def test_server_without_a_key_cannot_serve_a_restricted_dataset(root: Path) -> None:
    with serve(build_app(root, make_manifest(["alice"]), None)) as server:
        assert server.get("/files/blob.bin").status == 401
        reply = server.get("/files/blob.bin", token=token_for("alice"))
        assert reply.status == 401
        assert "no token key configured" in reply.json()["error"]


# --- metrics -----------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    """Every sample ``/metrics`` exposes, fetched without a token."""
    reply = server.get("/metrics")
    assert reply.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes (a labelled child may appear in between)."""
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_need_no_token(server: Server) -> None:
    reply = server.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    for name in ("requests", "response_bytes", "denials"):
        assert f"# TYPE bioengine_dataserver_{name}_total counter" in text


def test_requests_are_counted_by_method_and_status(server: Server) -> None:
    before = scrape(server)
    assert server.get("/files/blob.bin", token=token_for()).status == 200
    assert server.request("HEAD", "/files/blob.bin", token=token_for()).status == 200
    ranged = server.get("/files/blob.bin", token=token_for(), headers={"Range": "bytes=0-0"})
    assert ranged.status == 206
    assert server.get("/files/nope.bin", token=token_for()).status == 404
    assert server.get("/files/blob.bin").status == 401
    assert server.request("DELETE", "/files/blob.bin").status == 405
    assert server.get("/healthz").status == 200
    scrape(server)  # probes and scrapes are not counted
    after = scrape(server)
    requests = "bioengine_dataserver_requests_total"
    assert moved(before, after, requests, method="GET", status="200") == 1
    assert moved(before, after, requests, method="HEAD", status="200") == 1
    assert moved(before, after, requests, method="GET", status="206") == 1
    assert moved(before, after, requests, method="GET", status="404") == 1
    assert moved(before, after, requests, method="GET", status="401") == 1
    assert moved(before, after, requests, method="DELETE", status="405") == 1


def test_response_bytes_count_what_is_sent(server: Server) -> None:
    sent = "bioengine_dataserver_response_bytes_total"
    before = scrape(server)
    ranged = server.get("/files/blob.bin", token=token_for(), headers={"Range": "bytes=10-109"})
    assert (ranged.status, len(ranged.body)) == (206, 100)
    after_range = scrape(server)
    assert moved(before, after_range, sent) == 100

    etag = server.get("/files/blob.bin", token=token_for()).headers["ETag"]
    # Neither HEAD nor a 304 revalidation sends a body.
    assert server.request("HEAD", "/files/blob.bin", token=token_for()).status == 200
    revalidated = server.get("/files/blob.bin", token=token_for(), headers={"If-None-Match": etag})
    assert revalidated.status == 304
    assert moved(after_range, scrape(server), sent) == len(CONTENT)


def test_denials_are_counted_by_reason(server: Server, public_server: Server) -> None:
    denials = "bioengine_dataserver_denials_total"
    before = scrape(server)
    assert server.get("/files/blob.bin").status == 401
    assert server.get("/files/blob.bin", token=token_for(key=OTHER_KEY)).status == 401
    assert server.get("/files/blob.bin", headers={"Authorization": "Basic eDp5"}).status == 401
    assert server.get("/files/blob.bin", token=token_for("mallory")).status == 403
    assert server.get("/files/blob.bin", token=token_for("alice")).status == 200
    assert public_server.get("/files/blob.bin").status == 200  # open dataset: no denial
    after = scrape(server)
    assert moved(before, after, denials, reason="no_token") == 1
    assert moved(before, after, denials, reason="invalid_token") == 2
    assert moved(before, after, denials, reason="forbidden") == 1


# --- zarr over HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize("shards", [None, (32, 32)], ids=["chunked", "sharded"])
def test_zarr_array_reads_back_over_http(root: Path, shards: tuple[int, int] | None) -> None:
    data = np.random.default_rng(0).standard_normal((64, 64), dtype=np.float32)
    array = zarr.create_array(
        store=str(root / "img.zarr"), shape=(64, 64), chunks=(16, 16), shards=shards, dtype="f4"
    )
    array[:] = data
    store_bytes = sum(p.stat().st_size for p in (root / "img.zarr").rglob("*") if p.is_file())

    served: list[tuple[int, int]] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "GET" and request.path.startswith("/files/"):
            served.append((response.status, response.content_length or 0))

    app = build_app(root, make_manifest(["alice"]), PUBLIC_KEY)
    app.on_response_prepare.append(record)
    with serve(app) as server:
        remote = zarr.open_array(
            f"{server.url}/files/img.zarr",
            mode="r",
            storage_options={"headers": {"Authorization": f"Bearer {token_for()}"}},
        )
        whole = remote[:]
        assert whole.dtype == data.dtype
        assert whole.tobytes() == data.tobytes()

        served.clear()
        corner = remote[0:16, 0:16]
        assert corner.tobytes() == data[0:16, 0:16].tobytes()

    # One 16x16 chunk out of sixteen, plus (sharded) the shard index.
    assert 0 < sum(size for _, size in served) < store_bytes / 8
    if shards is not None:
        # Inside a shard, the index and the chunk are fetched with Range requests.
        assert [status for status, _ in served] == [206, 206]


# --- the CLI -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        return Server(port).get("/healthz").body == b"ok"
    except OSError:
        return False


@contextmanager
def run_cli(
    root: Path, tmp_path: Path, authorized_users: list[str], *options: str
) -> Iterator[tuple[Server, subprocess.Popen[bytes], Path]]:
    """The real ``bioengine-dataserver`` serving ``root``, with JSON logs; stopped on exit."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(make_manifest(authorized_users).model_dump(by_alias=True)))
    port = _free_port()
    log = tmp_path / "dataserver.log"
    argv = [sys.executable, "-m", "bioengine_operator.dataserver", "--root", str(root)]
    argv += ["--manifest", str(manifest), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-format", "json", *options]
    proc = procs.spawn(argv, log)
    try:
        procs.wait_for(lambda: _healthy(port), "dataserver /healthz", 30, proc=proc, log=log)
        yield Server(port), proc, log
    finally:
        if proc.poll() is None:
            procs.stop_group(proc.pid)
    assert not procs.alive(proc.pid)


def test_cli_serves_a_dataset(root: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "token-public-key.pem"
    key_file.write_text(tokens.public_key_pem(KEY))
    token = token_for()
    with run_cli(root, tmp_path, ["alice"], "--token-public-key-file", str(key_file)) as running:
        server, proc, log = running
        assert server.get("/files/blob.bin", token=token).body == CONTENT
        ranged = server.get(f"/files/blob.bin?token={token}", headers={"Range": "bytes=-5"})
        assert (ranged.status, ranged.body) == (206, CONTENT[-5:])
        assert server.get("/files/blob.bin").status == 401
        forged = server.get("/files/blob.bin", token=token_for(key=OTHER_KEY))
        assert forged.status == 401
        assert "bad signature" in forged.json()["error"]
        metrics = server.get("/metrics").body.decode()
        assert 'bioengine_dataserver_requests_total{method="GET",status="206"} 1.0' in metrics
        assert "bioengine_dataserver_response_bytes_total 1005.0" in metrics

        proc.terminate()
        assert proc.wait(timeout=15) == 0  # SIGTERM (what the kubelet sends) is a clean exit

    output = log.read_text()
    assert f"serving dataset '{DATASET}' from {root} at http://127.0.0.1:{server.port}" in output
    assert token not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    accesses = [r for r in records if r["logger"] == "aiohttp.access"]
    summary = [(r["method"], r["path"], r["status"], r["user"]) for r in accesses]
    assert ("GET", "/files/blob.bin", 206, "alice") in summary
    assert ("GET", "/files/blob.bin", 401, None) in summary
    assert all(isinstance(r["duration_ms"], float) for r in accesses)
    # The shared log format: UTC times with milliseconds, as the operator and bridge write.
    assert all(r["time"].endswith("Z") and r["level"] == "INFO" for r in accesses)


def test_cli_without_a_key_serves_only_an_open_dataset(root: Path, tmp_path: Path) -> None:
    with run_cli(root, tmp_path, ["*"]) as (server, _, _):
        assert server.get("/files/blob.bin").body == CONTENT
        refused = server.get("/files/blob.bin", token=token_for())
        assert refused.status == 401
        assert "no token key configured" in refused.json()["error"]


@pytest.mark.parametrize(
    ("broken", "manifest_text", "key_pem", "message"),
    [
        ("root", '{"id": "d", "name": "D"}', tokens.public_key_pem(KEY), "not a directory"),
        ("manifest", '{"id": 1}', tokens.public_key_pem(KEY), "not a valid dataset manifest"),
        ("manifest", "id: [unclosed", tokens.public_key_pem(KEY), "not a valid dataset manifest"),
        ("key", '{"id": "d", "name": "D"}', "\n", "not a PEM public key"),
        # The server must never be handed the signing key itself.
        ("key", '{"id": "d", "name": "D"}', tokens.private_key_pem(KEY), "not a PEM public key"),
        ("key", '{"id": "d", "name": "D"}', _public_pem(_p384_key()).decode(), "secp384r1"),
        ("key", '{"id": "d", "name": "D"}', None, "No such file"),
    ],
    ids=["root", "manifest-schema", "manifest-yaml", "empty-key", "private-key", "p384", "no-key"],
)
def test_cli_refuses_bad_arguments(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
    manifest_text: str,
    key_pem: str | None,
    message: str,
) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(manifest_text)
    key_file = tmp_path / "key.pem"
    if key_pem is not None:
        key_file.write_text(key_pem)
    argv = ["--manifest", str(manifest), "--token-public-key-file", str(key_file)]
    argv += ["--root", str(tmp_path / "missing" if broken == "root" else root)]

    def serve_forever(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("main() started serving despite a bad argument")

    # Fail at once, rather than serve until the test times out, if a check regresses.
    monkeypatch.setattr(web, "run_app", serve_forever)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert message in err
    if broken == "key" and key_pem is not None:
        assert f"--token-public-key-file {key_file}: " in err


def test_the_runtime_lists_a_folder_whose_name_has_capitals(
    server: Server, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bioengine.datasets.list_files`` as an app calls it, against the server: the folder's
    name reaches the server as written (a query is not case-folded)."""
    import bioengine  # the runtime, on pytest's pythonpath (pyproject.toml)

    (root / "Plates" / "A1").mkdir(parents=True)
    (root / "Plates" / "A1" / "Image.TIF").write_bytes(b"pixels")
    url = f"http://127.0.0.1:{server.port}"
    monkeypatch.setenv(bioengine.DATASETS_ENV, json.dumps({DATASET: {"url": url}}))
    listed = asyncio.run(bioengine.datasets.list_files(DATASET, "Plates", token=token_for()))
    assert listed == ["Plates/A1/Image.TIF"]
    top = asyncio.run(bioengine.datasets.list_files(DATASET, "Plates", False, token_for()))
    assert top == ["Plates/A1/"]
