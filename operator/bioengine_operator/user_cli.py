"""``bioengine``: the command for people who write and deploy BioEngine apps.

``bioengine up ./my-app`` runs an app folder, or the same YAML that goes to a cluster, on
this machine (see :mod:`bioengine_operator.local.cli`).

``bioengine render ./my-app | kubectl apply -f -`` turns an app folder of format 0.6.0 into
a BioEngineApp and the ConfigMap with its code (a large folder: its zip, split over several).
A bad folder or overrides file is refused before anything reaches the cluster: the message
names the file and the field, and the exit code is 2 (as for a bad command line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioengine_operator import appfolder
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.local import cli as local_cli

USAGE_ERROR = 2


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bioengine", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    render = verbs.add_parser(
        "render",
        help="print the Kubernetes objects of an app folder (for kubectl apply -f -)",
        description="Print the BioEngineApp of an app folder, and the ConfigMaps with its code.",
    )
    render.add_argument("folder", type=Path, help="the app's folder (with manifest.yaml)")
    render.add_argument("--name", help="the BioEngineApp's name (default: the manifest's id)")
    render.add_argument("-n", "--namespace", help="namespace of the objects")
    render.add_argument(
        "--source-uri",
        help="take the code from this zip (http(s), s3 or gs) instead of a ConfigMap",
    )
    render.add_argument(
        "--zip", type=Path, help="also write the folder as a zip here, to upload for --source-uri"
    )
    render.add_argument(
        "--overrides",
        type=Path,
        help="YAML merged into the spec (CRD field names): classes, methods, envVars, "
        "disableGpu, rayCluster, datasets, service",
    )
    local_cli.add_verbs(verbs)
    return parser.parse_args(argv)


def render(args: argparse.Namespace) -> str:
    overrides: dict[str, Any] = {}
    if args.overrides:
        try:
            overrides = yaml.safe_load(args.overrides.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise appfolder.AppFolderError(f"{args.overrides}: {err}") from None
        if not isinstance(overrides, dict):
            raise appfolder.AppFolderError(f"{args.overrides}: must be a mapping of spec fields")
    if args.zip:  # first: a folder too large even for source.zip is what the zip is for
        args.zip.write_bytes(appfolder.zip_of(appfolder.files_of(args.folder)))
    rendered = appfolder.render(
        args.folder,
        name=args.name,
        namespace=args.namespace,
        source_uri=args.source_uri,
        overrides=overrides,
    )
    try:
        BioEngineAppSpec.model_validate(rendered.objects[-1]["spec"])
    except ValidationError as err:
        where = args.overrides or args.folder / appfolder.MANIFEST
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise appfolder.AppFolderError(f"{where}: {fields}") from None
    for warning in rendered.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return yaml.dump_all(rendered.objects, Dumper=Dumper, sort_keys=False, allow_unicode=True)


class Dumper(yaml.SafeDumper):
    """Files as YAML block literals, so the rendered ConfigMap reads like the files."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    block = "\n" in text and not any(line != line.rstrip() for line in text.splitlines())
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if block else None)


Dumper.add_representer(str, _text)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.verb != "render":
        raise SystemExit(local_cli.run(args))
    try:
        sys.stdout.write(render(args))
    except appfolder.AppFolderError as err:
        print(f"bioengine {args.verb}: {err}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


if __name__ == "__main__":
    main()
