"""The local control plane used by the tests, `make cluster-up` and the demo (development only).

The harness runs the backends from the repository's own venvs (``.venv-hypha`` and so on,
made by ``make backends``), not from ``bioengine up``'s per-user cache.
"""

import os
from pathlib import Path

os.environ.setdefault("BIOENGINE_ENVS_DIR", str(Path(__file__).resolve().parents[2]))
