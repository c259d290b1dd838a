"""Ray Serve entry point of every BioEngineApp, mounted into its Ray pods by the operator.

It runs in the app's Ray image, not in the operator's, so it imports only the standard
library and Ray. The operator writes ``bioengine-app.json`` beside it (entry and extra
deployments); ``serveConfigV2`` points at ``bioengine_serve_entry:app``. Extra deployments
are bound first and passed to the entry class as keyword arguments named after their
module, as the BioEngine app manifest specifies.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ray import serve

CONFIG_FILE = Path(__file__).with_name("bioengine-app.json")


def load(import_path: str) -> Any:
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def as_deployment(target: Any) -> Any:
    """A plain class becomes a deployment named after it; a decorated one is kept."""
    return target if isinstance(target, serve.Deployment) else serve.deployment(target)


def build(config: dict[str, Any]) -> Any:
    handles = {
        path.partition(":")[0].rsplit(".", 1)[-1]: as_deployment(load(path)).bind()
        for path in config.get("deployments", [])
    }
    return as_deployment(load(config["entry"])).bind(**handles)


app = build(json.loads(CONFIG_FILE.read_text()))
