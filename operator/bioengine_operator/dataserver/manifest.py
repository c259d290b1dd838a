"""Loading the dataset manifest the server enforces.

The manifest model is the CRD's own (:class:`bioengine_operator.api.dataset.DatasetManifest`):
the operator writes it from the BioEngineDataset (camelCase, with ``id`` filled in) and the
server ships in the same image, so both sides always agree on its shape. Hand-written
manifests may use snake_case too.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from bioengine_operator.api.dataset import DatasetFile, DatasetManifest

__all__ = ["DatasetFile", "DatasetManifest", "load_manifest"]


def load_manifest(path: Path) -> DatasetManifest:
    """Read a manifest from a ``.json`` file, or as YAML (any other name, e.g. a ConfigMap key)."""
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        manifest = DatasetManifest.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        # One error type for callers, like the JSON decoding error (a ValueError).
        raise ValueError(f"{path} is not a valid dataset manifest: {exc}") from exc
    if not manifest.id:
        raise ValueError(f"{path}: the manifest needs an id")
    return manifest
