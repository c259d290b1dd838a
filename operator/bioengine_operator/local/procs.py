"""Start and stop server processes by PID and process group, never by name.

Every server a test or script starts goes through :func:`spawn`: it gets its own process
group (so its children die with it), its output goes to a log file (so a failing test can
print the tail), and, when tied to its parent, the kernel sends it SIGTERM if the parent
dies, so a killed pytest leaves no control plane behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Looked up once here: between fork and exec the child only calls it (no dlopen there).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tie_to_parent: bool = True,
    death_signal: signal.Signals = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group, appending stdout and stderr to ``log``; tied
    to its parent, it gets ``death_signal`` when the parent dies (SIGKILL for programs that
    ignore SIGTERM)."""

    def die_with_parent() -> None:
        _prctl(_PR_SET_PDEATHSIG, death_signal)

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent if tie_to_parent else None,
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def executable_of(pid: int) -> str | None:
    """First argv element of ``pid``, to check a recorded PID was not reused by another program."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.split(b"\0", 1)[0].decode(errors="replace") or None


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever outlives ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for others (`cluster down`) init does it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``condition`` until it holds; fail early and loudly if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s\n{tail(log)}")
        time.sleep(interval)


def tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last {len(text)} lines of {log} ---\n" + "\n".join(text)


def free_port() -> int:
    """A free TCP port on the loopback interface (every server here binds only there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children, their children, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of ``pids`` together (each process counted once)."""
    total = 0
    for pid in set(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total
