"""``bioengine up | down | status | logs | env``: the one-machine mode of the ``bioengine``
command.

``up`` checks every input first (a bad one exits 2, naming the file and the field, with
nothing started), then hands the inputs to the stack's supervisor, starting one if none
runs: in the foreground it stays until Ctrl-C, with ``--detach`` it returns once everything
serves or has failed (exit status 1 when anything failed). Running ``up`` again while a
stack runs updates what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bioengine_operator.bridge import signin
from bioengine_operator.local import envs, procs, resources, supervisor

USAGE_ERROR = 2


def add_verbs(verbs: Any) -> None:
    """Add the local verbs to the ``bioengine`` command's subparsers."""
    up = verbs.add_parser(
        "up",
        help="run resources and app folders on this machine, without Kubernetes",
        description="Run BioEngineApp, ModelRunner and BioEngineDataset resources (YAML files, "
        "folders of them, BioEngine app folders) on this machine, and register them in Hypha.",
    )
    up.add_argument("paths", nargs="+", type=Path, help="YAML files, folders, app folders")
    up.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="CLAIM=PATH",
        help="the local folder standing in for a PersistentVolumeClaim (repeatable)",
    )
    up.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="return once everything serves or has failed (exit status 1 if any of it failed)",
    )
    up.add_argument("--server-url", help="register in this Hypha server instead of an embedded one")
    up.add_argument("--workspace", help="the Hypha workspace (with --server-url)")
    up.add_argument(
        "--token-file", type=Path, help="file holding the Hypha token (else HYPHA_TOKEN)"
    )
    up.add_argument(
        "--worker-admins",
        default="",
        metavar="USERS",
        help="comma-separated Hypha users (ids or emails) who may upload, deploy and stop apps "
        "through the `bioengine-worker` service (without it nobody may)",
    )
    up.add_argument(
        "--envs-dir",
        type=Path,
        help=f"where the Ray, Triton and Hypha environments are installed (${envs.ENVS_DIR}, "
        "default ~/.cache/bioengine/envs)",
    )
    down = verbs.add_parser("down", help="stop everything `bioengine up` started")
    status = verbs.add_parser("status", help="show what `bioengine up` runs")
    status.add_argument("--json", action="store_true", help="as JSON")
    logs = verbs.add_parser("logs", help="show the log of an app, a model runner or a dataset")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=50, help="last lines of each log")
    env = verbs.add_parser(
        "env",
        help="print shell exports (server URL, workspace, a user's token) for Hypha clients",
        description="Print HYPHA_SERVER_URL, HYPHA_WORKSPACE and HYPHA_TOKEN for a user of the "
        'embedded Hypha: eval "$(bioengine env --user alice@example.org)"',
    )
    env.add_argument("--user", required=True, help="user id or email the token is for")
    page = verbs.add_parser(
        "page",
        help="print a link that opens an app's page signed in as a user",
        description="Print the sign-in link of an app's web page for a user of the embedded "
        "Hypha: the token rides in the link's fragment, which no server receives, and the "
        "page takes it out of the address bar.",
    )
    page.add_argument("name", help="the app (see the PAGE column of bioengine status)")
    page.add_argument("--user", required=True, help="user id or email to sign in as")
    for parser in (up, down, status, logs, env, page):
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=supervisor.default_state_dir(),
            help=f"the stack's state folder (${supervisor.STATE_ENV}, default "
            "~/.local/state/bioengine)",
        )


class UsageError(Exception):
    """Bad input: exit 2 with the message."""


def run(args: argparse.Namespace) -> int:
    # Absolute: processes entering Ray's namespace (nsenter) start in another folder.
    args.state_dir = args.state_dir.resolve()
    verbs = {"up": up, "down": down, "status": status, "logs": logs, "env": env, "page": page}
    verb = verbs[args.verb]
    try:
        return verb(args)
    except (resources.InputError, UsageError) as err:
        print(f"bioengine {args.verb}: {err}", file=sys.stderr)
        return USAGE_ERROR


def _volumes(args: argparse.Namespace) -> dict[str, Path]:
    found = {}
    for text in args.volume:
        claim, sep, path = text.partition("=")
        if not sep or not claim or not path:
            raise UsageError(f"--volume {text}: expected CLAIM=PATH")
        found[claim] = Path(path).resolve()
    return found


def up(args: argparse.Namespace) -> int:
    volumes = _volumes(args)
    paths = [p.resolve() for p in args.paths]
    loaded = resources.load(paths, volumes)  # every input checked before anything starts
    token = ""
    if args.workspace and not args.server_url:
        raise UsageError("--workspace is for a remote Hypha: give --server-url too")
    if args.server_url:
        if not args.workspace:
            raise UsageError("--server-url needs --workspace")
        try:
            token = (
                args.token_file.read_text().strip()
                if args.token_file
                else os.environ.get("HYPHA_TOKEN", "")
            )
        except OSError as err:
            raise UsageError(f"--token-file: {err}") from None
        if not token:
            raise UsageError("--server-url needs a token: --token-file, or HYPHA_TOKEN")
    # Owner-only: its socket runs code and mints tokens; its logs are the stack's.
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    args.state_dir.chmod(0o700)
    # Ctrl-C stops the stack even where this command was started with SIGINT ignored (as
    # a shell without job control starts background commands).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    owner = None
    if supervisor.running_pid(args.state_dir) is None:
        owner = _start_supervisor(args, token)
    elif args.server_url or args.envs_dir or args.worker_admins:
        print(
            "bioengine up: a stack runs already: --server-url, --workspace, --token-file, "
            "--worker-admins and --envs-dir keep their values (bioengine down, then up, to "
            "change them)",
            file=sys.stderr,
        )
    started = time.monotonic()
    message = {
        "verb": "up",
        "paths": [str(p) for p in paths],
        "volumes": {k: str(v) for k, v in volumes.items()},
    }
    try:
        answer = _ask(args.state_dir, message, started)
        if answer.get("error"):
            print(f"bioengine up: {answer['error']}", file=sys.stderr)
        else:
            _print_summary(answer)
        # What this command asked for (the stack may hold more, from earlier commands).
        asked = {(r.kind, r.name) for r in loaded}
        failed = [
            r["name"]
            for r in answer.get("rows") or []
            if r.get("state") == "Failed" and (r.get("kind"), r.get("name")) in asked
        ]
        if failed:
            print(f"bioengine up: failed: {', '.join(failed)}", file=sys.stderr)
        if owner is None or args.detach:
            # A script that starts the stack learns from the exit status that part failed.
            return 1 if answer.get("error") or failed else 0
        print("running: Ctrl-C here, or `bioengine down`, stops everything", flush=True)
        owner.wait()
    except KeyboardInterrupt:
        if owner is None:  # the stack is another command's: it carries on
            print("\ninterrupted; the stack keeps running (bioengine down stops it)")
            return 130
        print("\nstopping everything...", file=sys.stderr, flush=True)
        procs.stop_group(owner.pid, timeout=120)
    return 0


def _start_supervisor(args: argparse.Namespace, token: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", supervisor.MODULE, f"--state-dir={args.state_dir}"]
    if args.envs_dir:
        argv.append(f"--envs-dir={args.envs_dir.resolve()}")
    if args.worker_admins:
        argv.append(f"--worker-admins={args.worker_admins}")
    env = {k: v for k, v in os.environ.items() if k != "HYPHA_TOKEN"}
    if args.server_url:
        argv += [f"--server-url={args.server_url}", f"--workspace={args.workspace}"]
        env["HYPHA_TOKEN"] = token
    log = args.state_dir / supervisor.LOG
    # Foreground: tied to this command (it dies with it); detached: on its own.
    owner = procs.spawn(argv, log, env=env, tie_to_parent=not args.detach)
    procs.wait_for(
        lambda: (
            (args.state_dir / supervisor.SOCKET).exists()
            and supervisor.running_pid(args.state_dir) == owner.pid
        ),
        "bioengine supervisor",
        30,
        proc=owner,
        log=log,
    )
    return owner


def _ask(state_dir: Path, message: dict[str, Any], started: float) -> dict[str, Any]:
    for answer in supervisor.request(state_dir, message):
        if "progress" in answer:
            print(f"[{time.monotonic() - started:6.1f}s] {answer['progress']}", flush=True)
        if "done" in answer:
            return answer
    raise AssertionError("unreachable: request() ends with a done answer")


def _print_summary(answer: dict[str, Any]) -> None:
    rows = answer.get("rows") or []
    memory = answer.get("memory", 0) / 2**30
    print(
        f"\nHypha: {answer.get('server_url')}  workspace: {answer.get('workspace')}  "
        f"memory of the stack: {memory:.1f} GiB"
    )
    if not rows:
        print("nothing runs")
        return
    columns = [("kind", "KIND"), ("name", "NAME"), ("state", "STATE"), ("service", "SERVICE")]
    widths = [max(len(title), *(len(r[key]) for r in rows)) for key, title in columns]
    print("  ".join(t.ljust(w) for (_, t), w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(row[k].ljust(w) for (k, _), w in zip(columns, widths, strict=True)))
        if row["page"]:
            print(f"    page: {row['page']}  (signed in: bioengine page {row['name']} --user U)")
        if row["message"]:
            print(f"    {row['message']}")


def _require_running(state_dir: Path) -> None:
    if supervisor.running_pid(state_dir) is None:
        raise UsageError(f"nothing runs for {state_dir} (start it with `bioengine up`)")


def down(args: argparse.Namespace) -> int:
    pid = supervisor.running_pid(args.state_dir)
    if pid is None:
        print("nothing runs")
        return 0
    print("stopping everything...", flush=True)
    procs.stop_group(pid, timeout=120)  # the supervisor stops its processes, then exits
    print("stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    _require_running(args.state_dir)
    answer = _ask(args.state_dir, {"verb": "status"}, time.monotonic())
    if args.json:
        print(json.dumps({k: v for k, v in answer.items() if k != "done"}, indent=2))
    else:
        _print_summary(answer)
    return 0


def _row(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The status row of the resource ``name`` that a running stack shows, if any."""
    _require_running(state_dir)
    rows = _ask(state_dir, {"verb": "status"}, time.monotonic()).get("rows") or []
    return next((r for r in rows if r["name"] == name), None)


def logs(args: argparse.Namespace) -> int:
    row = _row(args.state_dir, args.name)
    if row is None or not row["log"]:
        raise UsageError(f"{args.name}: no such resource runs (see `bioengine status`)")
    log = Path(row["log"])
    # An app's log is its Serve replicas' logs (one per replica) in Ray's serve/ folder.
    files = sorted(log.glob(f"replica_{args.name}_*.log")) if log.is_dir() else [log]
    for path in files:
        print(procs.tail(path, args.lines))
    return 0


def page(args: argparse.Namespace) -> int:
    row = _row(args.state_dir, args.name)
    if row is None or not row["page"]:
        raise UsageError(f"{args.name}: no app with a page runs (see `bioengine status`)")
    answer = _ask(args.state_dir, {"verb": "env", "user": args.user}, time.monotonic())
    if answer.get("error"):
        raise UsageError(answer["error"])
    path = urllib.parse.urlsplit(row["page"]).path
    print(signin.link(answer["server_url"], answer["workspace"], answer["token"], path))
    return 0


def env(args: argparse.Namespace) -> int:
    _require_running(args.state_dir)
    answer = _ask(args.state_dir, {"verb": "env", "user": args.user}, time.monotonic())
    if answer.get("error"):
        raise UsageError(answer["error"])
    print(f"export HYPHA_SERVER_URL={answer['server_url']}")
    print(f"export HYPHA_WORKSPACE={answer['workspace']}")
    print(f"export HYPHA_TOKEN={answer['token']}")
    return 0
