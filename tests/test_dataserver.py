"""The dataset server, against real files in ``tmp_path`` and real HTTP on 127.0.0.1.

In-process servers run on their own event loop in a thread so that the clients can be plain
blocking ones: ``http.client``, which sends request targets byte for byte (so traversal
attempts reach the server un-normalized), and zarr over fsspec's HTTP filesystem. One test
runs the real CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from aiohttp import web

from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.__main__ import main
from bioengine_operator.dataserver.app import AccessLogger, build_app
from bioengine_operator.dataserver.manifest import DatasetManifest, load_manifest
from bioengine_operator.devcluster import procs

KEY = b"test-signing-key"
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
    with serve(build_app(root, make_manifest(["alice", "bob"]), KEY)) as running:
        yield running


@pytest.fixture
def public_server(root: Path) -> Iterator[Server]:
    with serve(build_app(root, make_manifest(["*"]), KEY)) as running:
        yield running


# --- tokens ------------------------------------------------------------------------------


def test_token_round_trip() -> None:
    now = 1_700_000_000.5
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=60, now=now)
    claims = tokens.verify(KEY, token, dataset=DATASET, now=now + 59)
    assert claims == tokens.Claims(user="alice", dataset=DATASET, expires=1_700_000_060)


def test_token_format_is_base64url_payload_dot_hmac() -> None:
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=60, now=1000)
    encoded_payload, encoded_signature = token.split(".")
    assert "=" not in token
    payload = base64.urlsafe_b64decode(encoded_payload + "=" * (-len(encoded_payload) % 4))
    signature = base64.urlsafe_b64decode(encoded_signature + "=" * (-len(encoded_signature) % 4))
    assert json.loads(payload) == {"sub": "alice", "ds": DATASET, "exp": 1060}
    assert signature == hmac.new(KEY, payload, hashlib.sha256).digest()


def _signed(payload: bytes) -> str:
    """A correctly signed token around an arbitrary payload, to test payload validation."""
    signature = hmac.new(KEY, payload, hashlib.sha256).digest()
    return ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in (payload, signature)
    )


def _tampered() -> str:
    """Bob's payload with Alice's signature: the user was swapped after signing."""
    alice = token_for("alice", now=1000)
    bob = token_for("bob", now=1000)
    return f"{bob.split('.')[0]}.{alice.split('.')[1]}"


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
        (token_for(key=b"another-key", now=1000), "bad signature"),
        (_tampered(), "bad signature"),
        (token_for(dataset="other-dataset", now=1000), "not 'cells-2024'"),
        (token_for(ttl_seconds=60, now=1000 - 60), "expired at 1970-01-01T00:16:40"),
    ],
)
def test_verify_rejects(token: str, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message):
        tokens.verify(KEY, token, dataset=DATASET, now=1000)


def test_token_is_expired_from_its_exp_second_on() -> None:
    token = tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=10, now=1000)
    assert tokens.verify(KEY, token, dataset=DATASET, now=1009.9).user == "alice"
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(KEY, token, dataset=DATASET, now=1010)


def test_mint_refuses_empty_key_and_non_positive_ttl() -> None:
    with pytest.raises(ValueError, match="empty"):
        tokens.mint(b"", user="alice", dataset=DATASET, ttl_seconds=60)
    with pytest.raises(ValueError, match="positive"):
        tokens.mint(KEY, user="alice", dataset=DATASET, ttl_seconds=0)


@pytest.mark.parametrize(
    ("stored", "key"),
    [(b"k3y", b"k3y"), (b"k3y\n", b"k3y"), (b"k3y\r\n", b"k3y"), (b"k3y\n\n", b"k3y\n")],
)
def test_load_key_strips_one_trailing_newline(tmp_path: Path, stored: bytes, key: bytes) -> None:
    (tmp_path / "key").write_bytes(stored)
    assert tokens.load_key(tmp_path / "key") == key


def test_load_key_refuses_an_empty_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        tokens.load_key(tmp_path / "key")


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


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (token_for(ttl_seconds=60, now=time.time() - 3600), "expired"),
        (token_for(key=b"another-key"), "bad signature"),
        (token_for(dataset="other-dataset"), "for dataset 'other-dataset'"),
        ("garbage", "malformed"),
    ],
)
def test_invalid_token_is_401(server: Server, token: str, message: str) -> None:
    reply = server.get("/files/blob.bin", token=token)
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
    with serve(build_app(root, make_manifest([]), KEY)) as server:
        assert server.get("/files/blob.bin", token=token_for("alice")).status == 403
        assert server.get("/files/blob.bin").status == 401


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

    app = build_app(root, make_manifest(["alice"]), KEY)
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


def test_cli_serves_a_dataset(root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(make_manifest(["alice"]).model_dump(by_alias=True)))
    key_file = tmp_path / "signing-key"
    key_file.write_bytes(KEY + b"\n")  # as `kubectl create secret --from-file` often stores it
    port = _free_port()
    log = tmp_path / "dataserver.log"
    argv = [
        sys.executable,
        "-m",
        "bioengine_operator.dataserver",
        "--root",
        str(root),
        "--manifest",
        str(manifest),
        "--signing-key-file",
        str(key_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-format",
        "json",
    ]
    proc = procs.spawn(argv, log)
    try:
        procs.wait_for(lambda: _healthy(port), "dataserver /healthz", 30, proc=proc, log=log)
        server = Server(port)
        token = token_for()
        assert server.get("/files/blob.bin", token=token).body == CONTENT
        ranged = server.get(f"/files/blob.bin?token={token}", headers={"Range": "bytes=-5"})
        assert (ranged.status, ranged.body) == (206, CONTENT[-5:])
        assert server.get("/files/blob.bin").status == 401

        proc.terminate()
        assert proc.wait(timeout=15) == 0  # SIGTERM (what the kubelet sends) is a clean exit
    finally:
        if proc.poll() is None:
            procs.stop_group(proc.pid)
    assert not procs.alive(proc.pid)

    output = log.read_text()
    assert f"serving dataset '{DATASET}' from {root} at http://127.0.0.1:{port}" in output
    assert token not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    accesses = [
        (r["method"], r["path"], r["status"], r["user"])
        for r in records
        if r["logger"] == "aiohttp.access"
    ]
    assert ("GET", "/files/blob.bin", 206, "alice") in accesses
    assert ("GET", "/files/blob.bin", 401, None) in accesses


@pytest.mark.parametrize(
    ("broken", "manifest_text", "key"),
    [
        ("root", '{"id": "d", "name": "D"}', KEY),
        ("manifest", '{"id": 1}', KEY),
        ("manifest", "id: [unclosed", KEY),
        ("key", '{"id": "d", "name": "D"}', b"\n"),
    ],
)
def test_cli_refuses_bad_arguments(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    broken: str,
    manifest_text: str,
    key: bytes,
) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(manifest_text)
    key_file = tmp_path / "key"
    key_file.write_bytes(key)
    argv = ["--manifest", str(manifest), "--signing-key-file", str(key_file)]
    argv += ["--root", str(tmp_path / "missing" if broken == "root" else root)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
