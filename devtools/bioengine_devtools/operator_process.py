"""Run the operator as a real process against a dev cluster (tests, benchmarks, demo).

It is started exactly as in a pod (the ``bioengine-operator`` entry point) with the
cluster's kubeconfig, after our CRDs are installed; readiness is kopf's liveness endpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import tools
from bioengine_operator.local import procs

CRD_DIR = tools.REPO_ROOT / "crds"


def install_crds(cluster: devcluster.DevCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bioengineapps.bioengine.bioimage.io",
        "crd/modelrunners.bioengine.bioimage.io",
        "crd/bioenginedatasets.bioengine.bioimage.io",
    )


@dataclasses.dataclass
class OperatorProcess:
    cluster: devcluster.DevCluster
    log: Path
    resync_seconds: float = 2.0
    extra_args: tuple[str, ...] = ()
    verbose: bool = True  # debug logs (tests read them); benchmarks run as the chart does
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> None:
        port = devcluster.free_port()
        self.metrics_port = devcluster.free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "BIOENGINE_RESYNC_SECONDS": str(self.resync_seconds),
        }
        self.proc = procs.spawn(
            [
                sys.executable,
                "-m",
                "bioengine_operator.cli",
                *(["--verbose"] if self.verbose else []),
                "--log-format=json",
                f"--liveness=http://127.0.0.1:{port}/healthz",
                f"--metrics-address=127.0.0.1:{self.metrics_port}",
                *self.extra_args,
            ],
            self.log,
            env=env,
        )
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        procs.wait_for(healthy, "operator liveness", timeout, proc=self.proc, log=self.log)

    def stop(self, kill: bool = False) -> None:
        """Stop the operator; ``kill``: SIGKILL, so it cannot finish what it was doing."""
        if self.proc is not None:
            if kill:
                os.killpg(self.proc.pid, signal.SIGKILL)
            procs.stop_group(self.proc.pid)
            self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
