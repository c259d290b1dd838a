"""A loopback-only network namespace for servers that bind every interface (Ray does).

Ray ignores ``--node-ip-address=127.0.0.1`` and listens on all interfaces, so tests run it
inside a namespace whose only interface is its own loopback. The namespace also gets its
own PID namespace: when the holder process (PID 1 inside) ends, the kernel ends every
process in it, so nothing Ray forked can outlive a test.

Programs in the host namespace reach a port inside through :func:`relay`: a process that
binds its listening socket on the host loopback *before* entering the namespace, then
connects to the target from inside it (a socket keeps the namespace it was created in).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

from bioengine_devtools import procs

CLONE_NEWNET = 0x40000000


@dataclasses.dataclass
class LoopbackNamespace:
    workdir: Path
    holder: subprocess.Popen[bytes] | None = None
    init_pid: int = 0  # host PID of the namespace's PID 1

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
                "ip link set lo up && exec sleep infinity",
            ],
            self.workdir / "netns.log",
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
            procs.stop_group(self.holder.pid)  # PID 1 inside dies: the kernel ends the rest
            self.holder = None

    def __enter__(self) -> LoopbackNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay(
    namespace: LoopbackNamespace, target_port: int, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a relay from a free host loopback port to ``127.0.0.1:target_port`` inside."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "bioengine_devtools.netns",
            f"--listen-port={port}",
            f"--netns={namespace.net_path}",
            f"--target-port={target_port}",
        ],
        log,
    )

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    procs.wait_for(listening, "relay", 15, proc=proc, log=log)
    return proc, port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def _serve(listener: socket.socket, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", target_port
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
    parser.add_argument("--netns", required=True)
    parser.add_argument("--target-port", type=int, required=True)
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.listen_port))  # bound in the host namespace
    listener.listen(128)
    fd = os.open(args.netns, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")
    os.close(fd)
    asyncio.run(_serve(listener, args.target_port))  # upstream sockets: inside the netns


if __name__ == "__main__":
    main()
