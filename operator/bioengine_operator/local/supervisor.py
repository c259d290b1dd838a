"""The process that owns a ``bioengine up`` stack, and the way commands talk to it.

One supervisor per state folder starts, updates and stops every process of the stack, so
a second ``bioengine up`` (updating what changed), ``status``, ``env`` and ``down`` all go
to the one owner instead of racing it. They talk over a Unix socket in the state folder
(no network port): a request is one JSON line; the answer is JSON lines of progress, then
one with ``done``. SIGTERM or SIGINT (``bioengine down``, or Ctrl-C in the terminal of a
foreground ``up``) stops the whole stack before the supervisor exits; every process it
started was spawned in its own process group, tied to the supervisor's life.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bioengine_operator.bridge import access
from bioengine_operator.local import envs, procs, resources
from bioengine_operator.local.stack import LocalStack, Remote

SOCKET, PID_FILE, LOG, LOCK = "control.sock", "supervisor.pid", "supervisor.log", "supervisor.lock"
STATE_ENV = "BIOENGINE_STATE_DIR"
MODULE = "bioengine_operator.local.supervisor"
# How often the supervisor re-reads Serve's status between requests, so that `status` shows
# a replica failing its health check (Serve replaces it within seconds).
REFRESH_SECONDS = 1.0


class Stopped(BaseException):
    """SIGTERM or SIGINT: stop the stack and exit."""


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".local" / "state" / "bioengine")


def running_pid(state_dir: Path) -> int | None:
    """The supervisor's PID if one runs for ``state_dir`` (checked, not just recorded)."""
    try:
        pid = int((state_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if MODULE.encode() in cmdline and procs.alive(pid) else None


def request(state_dir: Path, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Send ``message`` to the supervisor and yield its answers, the last with ``done``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(state_dir / SOCKET))
        conn.sendall(json.dumps(message).encode() + b"\n")
        with conn.makefile("r", encoding="utf-8") as answers:
            for line in answers:
                answer = json.loads(line)
                yield answer
                if "done" in answer:
                    return
    raise ConnectionError("the supervisor stopped before answering")


class Supervisor:
    def __init__(
        self, state_dir: Path, remote: Remote | None, worker_admins: tuple[str, ...] = ()
    ) -> None:
        self.state_dir = state_dir
        self.client: socket.socket | None = None
        self.stack = LocalStack(state_dir, self.progress, remote, worker_admins)

    def progress(self, text: str) -> None:
        print(text, flush=True)
        if self.client is not None:
            try:
                self.client.sendall(json.dumps({"progress": text}).encode() + b"\n")
            except OSError:  # the asking command went away (Ctrl-C): carry on regardless
                self.client = None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        # One supervisor per state folder, for as long as it lives.
        lock = (self.state_dir / LOCK).open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another supervisor runs for {self.state_dir}") from None
        path = self.state_dir / SOCKET
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Whoever can connect can run code and mint tokens: the owner only, from the start.
        old_umask = os.umask(0o077)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(8)
        (self.state_dir / PID_FILE).write_text(str(os.getpid()))
        listener.settimeout(REFRESH_SECONDS)  # accepted connections stay blocking
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    self.refresh()
                    continue
                with conn:
                    if not self.handle(conn):
                        return
        except Stopped:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: cleanup goes on
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            listener.close()
            path.unlink(missing_ok=True)
            self.stack.stop()
            (self.state_dir / PID_FILE).unlink(missing_ok=True)

    def refresh(self) -> None:
        """The apps' states from Serve; a failure to read them is logged and tried again."""
        if not self.stack.started or not self.stack.lock.acquire(blocking=False):
            return  # the worker service is changing the stack: next time
        try:
            self.stack.refresh()
        except Exception:  # the stack keeps running; the next refresh tries again
            logging.exception("reading the apps' states failed")
        finally:
            self.stack.lock.release()

    def handle(self, conn: socket.socket) -> bool:
        """Answer one request; False when it asks the supervisor to stop."""
        self.client = conn
        message: dict[str, Any] = {}
        try:
            with conn.makefile("r", encoding="utf-8") as lines:
                message = json.loads(lines.readline() or "{}")
            with self.stack.lock:  # the worker service may be changing it too
                answer = self.answer(message)
        except resources.InputError as err:
            answer = {"done": False, "error": str(err)}
        except Exception as err:  # the stack keeps running; the log has the traceback
            logging.exception("request %s failed", message.get("verb"))
            answer = {"done": False, "error": f"{type(err).__name__}: {err}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")
        self.client = None
        return bool(message.get("verb") != "down")

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        verb = message.get("verb")
        if verb == "up":
            loaded = resources.load(
                [Path(p) for p in message["paths"]],
                {k: Path(v) for k, v in message.get("volumes", {}).items()},
            )
            if not self.stack.started:
                self.stack.start()
            self.stack.apply(loaded)
        elif verb == "env":
            token = self.stack.user_token(message["user"])
            return {"done": True, **self.connection(), "token": token}
        elif verb == "status":
            self.stack.refresh()
        elif verb != "down":
            raise ValueError(f"unknown request {verb!r}")
        rows = self.stack.rows()
        stack = [os.getpid(), *procs.descendants(os.getpid())]
        return {"done": True, **self.connection(), "rows": rows, "memory": procs.rss_bytes(stack)}

    def connection(self) -> dict[str, Any]:
        if not self.stack.started:
            return {}
        return {"server_url": self.stack.server_url, "workspace": self.stack.workspace}


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description="owner of a bioengine up stack (internal)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--envs-dir", type=Path)
    parser.add_argument("--server-url")
    parser.add_argument("--workspace")
    parser.add_argument("--worker-admins", default="", help="comma-separated users")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    remote = None
    if args.server_url:  # the token comes only from the environment, never the command line
        remote = Remote(args.server_url, args.workspace, os.environ.pop("HYPHA_TOKEN", ""))
    started = time.monotonic()
    if args.envs_dir:  # for every backend this process and its children start
        os.environ[envs.ENVS_DIR] = str(args.envs_dir)
    Supervisor(args.state_dir, remote, access.user_list(args.worker_admins)).run()
    print(f"stopped after {time.monotonic() - started:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
