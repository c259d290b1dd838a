"""A loopback-only network namespace for servers that bind every interface (Ray does).

Ray ignores ``--node-ip-address=127.0.0.1`` and listens on all interfaces, so tests run it
inside a namespace whose only interface is its own loopback. The namespace also gets its
own PID namespace: when the holder process (PID 1 inside) ends, the kernel ends every
process in it, so nothing Ray forked can outlive a test.

Programs in the host namespace reach a port inside through :func:`relay`: a process that
binds its listening socket on the host loopback *before* entering the namespace, then
connects to the target from inside it (a socket keeps the namespace it was created in).
:func:`reverse_relay` is the other way round, as a pod reaches a Service: it listens on a
port inside and connects to the same port on the host loopback. :func:`index_proxy` is the one
way out to the network: an HTTP CONNECT proxy inside for pip (``PIP_PROXY``), which reaches
only the package index's hosts, so Ray installs an app's ``pip=`` requirements (its
``runtime_env``) while nothing else inside can reach beyond this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

from bioengine_operator.local import procs

CLONE_NEWNET = 0x40000000


@dataclasses.dataclass
class LoopbackNamespace:
    workdir: Path
    # Killed with its owner (the default); off only for a namespace meant to outlive the
    # command that started it (the development cluster's `up`).
    tie_to_parent: bool = True
    holder: subprocess.Popen[bytes] | None = None
    init_pid: int = 0  # host PID of the namespace's PID 1

    def script(self) -> str:
        """What the namespace's first process runs: set the namespace up, then hold it."""
        return "ip link set lo up && exec sleep infinity"

    def start(self, timeout: float = 15.0) -> None:
        self.holder = procs.spawn(
            # --mount-proc: programs that look themselves up in /proc (Ray, via psutil) must
            # see the namespace's PIDs there.
            [
                "unshare",
                "--net",
                "--pid",
                "--mount",
                "--mount-proc",
                "--fork",
                "--kill-child=SIGKILL",
                "sh",
                "-c",
                self.script(),
            ],
            self.workdir / "netns.log",
            # unshare --fork ignores SIGTERM: were the owner to crash, all of Ray would stay.
            death_signal=signal.SIGKILL,
            tie_to_parent=self.tie_to_parent,
        )
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")

        def ready() -> bool:
            pids = children.read_text().split()
            if not pids:
                return False
            self.init_pid = int(pids[0])
            out = subprocess.run(
                [*self.enter(), "ip", "-o", "link", "show", "up"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            lines = out.splitlines()
            return len(lines) == 1 and " lo:" in lines[0]  # loopback only, and it is up

        try:
            procs.wait_for(ready, "network namespace", timeout, proc=self.holder)
        except BaseException:
            self.stop()
            raise

    def enter(self) -> list[str]:
        """Prefix that runs a command inside the namespace (network, PID and mounts)."""
        return [
            "nsenter",
            f"--net=/proc/{self.init_pid}/ns/net",
            f"--pid=/proc/{self.init_pid}/ns/pid",
            f"--mount=/proc/{self.init_pid}/ns/mnt",
        ]

    @property
    def net_path(self) -> str:
        return f"/proc/{self.init_pid}/ns/net"

    def stop(self) -> None:
        if self.holder is not None:
            # SIGKILL at once: `unshare --fork` and the namespace's PID 1 ignore SIGTERM, and
            # hold nothing to clean up. PID 1 inside dies: the kernel ends the rest.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.holder.pid, signal.SIGKILL)
            procs.stop_group(self.holder.pid)
            self.holder = None

    def __enter__(self) -> LoopbackNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay(
    namespace: LoopbackNamespace, target_port: int, log: Path, target_host: str = "127.0.0.1"
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a relay from a free host loopback port to ``target_host:target_port`` inside
    (its loopback, or an address only the namespace routes, such as a Service's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = _spawn(
        namespace,
        port,
        target_port,
        log,
        f"--target-host={target_host}",
        tie=namespace.tie_to_parent,
    )
    return proc, port


def reverse_relay(
    namespace: LoopbackNamespace, port: int, log: Path, listen: tuple[str, int] | None = None
) -> subprocess.Popen[bytes]:
    """Start a relay from ``127.0.0.1:port`` inside the namespace (or from ``listen``, any
    loopback address and port inside) to ``port`` on the host loopback, so code inside
    reaches a host server at the address the host uses (or at a Service's address)."""
    host, listen_port = listen or ("127.0.0.1", port)
    return _spawn(namespace, listen_port, port, log, "--reverse", f"--listen-host={host}")


def index_proxy(
    namespace: LoopbackNamespace, log: Path, hosts: list[tuple[str, int]]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an HTTP CONNECT proxy on ``127.0.0.1:<port>`` inside the namespace that tunnels
    to ``hosts`` (the package index's) from this machine's network, and to nothing else."""
    port = procs.free_port()  # free here; the namespace is fresh, and binds it first
    allow = [f"--allow={host}:{target}" for host, target in hosts]
    return _spawn(namespace, port, 0, log, "--reverse", *allow), port


def package_index_hosts(environ: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """Where pip downloads from: PyPI (its index and its file host), or the indexes named by
    ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` (space-separated URLs)."""
    environ = dict(os.environ if environ is None else environ)
    urls = " ".join(environ.get(k, "") for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")).split()
    hosts = (
        {("pypi.org", 443), ("files.pythonhosted.org", 443)}
        if not environ.get("PIP_INDEX_URL")
        else set()
    )
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.hostname:
            default = 443 if parsed.scheme == "https" else 80
            hosts.add((parsed.hostname, parsed.port or default))
    return sorted(hosts)


def _spawn(
    namespace: LoopbackNamespace, listen: int, target: int, log: Path, *flags: str, tie: bool = True
) -> subprocess.Popen[bytes]:
    """The relay process, once its listening socket is bound (it touches a ready file)."""
    ready = log.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "bioengine_operator.local.netns",
            f"--listen-port={listen}",
            f"--netns={namespace.net_path}",
            f"--target-port={target}",
            f"--ready-file={ready}",
            *flags,
        ],
        log,
        tie_to_parent=tie,
    )
    try:
        procs.wait_for(ready.exists, "relay", 15, proc=proc, log=log)
    except BaseException:
        procs.stop_group(proc.pid)
        raise
    return proc


def setns(path: str | int) -> None:
    """Move the calling thread into the network namespace at ``path`` (or of an open fd)."""
    fd = os.open(path, os.O_RDONLY) if isinstance(path, str) else path
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")
    os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def _serve_proxy(listener: socket.socket, allowed: set[tuple[str, int]]) -> None:
    """HTTP CONNECT to an allowed host and port, then bytes both ways (pip's TLS is end to
    end); any other request is refused with 403."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or (host, int(port or 0)) not in allowed:
                raise PermissionError(f"{method} {target}")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except (
            TimeoutError,
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


async def _serve(listener: socket.socket, target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                target_host, target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="relay a host loopback port into a netns")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--listen-host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument(
        "--target-host", default="127.0.0.1", help="inside the namespace (not with --reverse)"
    )
    parser.add_argument("--reverse", action="store_true", help="listen inside, connect out")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="with --reverse: a CONNECT proxy to these only (the package index's hosts)",
    )
    parser.add_argument("--ready-file", type=Path, help="touched once listening")
    args = parser.parse_args()
    host = os.open("/proc/self/ns/net", os.O_RDONLY) if args.reverse else -1
    if args.reverse:
        setns(args.netns)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not args.listen_host.startswith("127."):
        parser.error("--listen-host must be a loopback address (127.0.0.0/8)")
    listener.bind((args.listen_host, args.listen_port))
    listener.listen(128)
    # Upstream sockets are made after this: inside the netns (relay) or on the host (reverse).
    setns(host if args.reverse else args.netns)
    if args.ready_file:
        args.ready_file.touch()
    if args.allow:
        allowed = {(h, int(p)) for h, _, p in (a.rpartition(":") for a in args.allow)}
        asyncio.run(_serve_proxy(listener, allowed))
        return
    if args.reverse and not args.target_host.startswith("127."):
        parser.error("--target-host must be a loopback address with --reverse (the host's)")
    asyncio.run(_serve(listener, args.target_host, args.target_port))


if __name__ == "__main__":
    main()
