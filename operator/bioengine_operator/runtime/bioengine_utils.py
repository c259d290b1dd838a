"""``bioengine.utils``: the helpers of the upstream ``bioengine`` package that apps and their
scripts import, with the same names, signatures and results.

Shipped beside :mod:`bioengine` in every Ray pod (which registers it as ``bioengine.utils``);
standard library only, so it runs wherever an app runs.

* :func:`create_file_list_from_directory`: an app folder as the list of files that a
  BioEngine worker's ``upload_app`` takes (``{"name", "content", "type": "text"|"base64"}``).
* :func:`create_logger`: a named logger writing to stderr, and to a file if given.
* :func:`create_context` / :func:`check_permissions`: a Hypha-style request context, and the
  ``authorized_users`` rule (user id or email, ``"*"`` for everyone).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

__all__ = [
    "check_permissions",
    "create_context",
    "create_file_list_from_directory",
    "create_logger",
    "date_format",
    "file_logging_format",
    "stream_logging_format",
]

date_format = "%Y-%m-%d %H:%M:%S"
file_logging_format = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
stream_logging_format = file_logging_format
_HANDLER_MARK = "_bioengine_handler"


def create_file_list_from_directory(
    directory_path: str | Path, _artifact_id_suffix: str | None = None
) -> list[dict[str, Any]]:
    """Every file under ``directory_path`` (sorted, subfolders included), as ``name`` (its
    path in the folder, with ``/``), ``content`` and ``type``: UTF-8 text as ``"text"``,
    anything else base64-encoded as ``"base64"``. ``_artifact_id_suffix`` is accepted for
    upstream's signature; an app's id is the manifest's own here, so it must be None."""
    if _artifact_id_suffix is not None:
        raise ValueError("_artifact_id_suffix is not supported: set the id in manifest.yaml")
    folder = Path(directory_path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    files: list[dict[str, Any]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        content = path.read_bytes()
        name = path.relative_to(folder).as_posix()
        try:
            files.append({"name": name, "content": content.decode("utf-8"), "type": "text"})
        except UnicodeDecodeError:
            encoded = base64.b64encode(content).decode("ascii")
            files.append({"name": name, "content": encoded, "type": "base64"})
    return files


def create_logger(
    name: str, level: int = logging.INFO, log_file: str | Path | None = None
) -> logging.Logger:
    """The logger ``name`` at ``level``, writing to stderr and, with ``log_file``, to that file
    too (its folder is created). Calling it again for the same name replaces the handlers it
    added before rather than doubling every line."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(file_logging_format, date_format))
        setattr(handler, _HANDLER_MARK, True)
        logger.addHandler(handler)
    return logger


def create_context(user_id: str | None = None, user_email: str | None = None) -> dict[str, Any]:
    """A request context as Hypha passes it to ``@bioengine.method(context=True)``."""
    return {"user": {"id": user_id or "anonymous", "email": user_email or "anonymous@example.com"}}


def check_permissions(
    context: dict[str, Any] | None,
    authorized_users: list[str] | str | None,
    resource_name: str,
    allow_wildcard: bool = True,
) -> None:
    """Raise PermissionError unless the context's user (by id or email) is among
    ``authorized_users``; ``"*"`` admits everyone (if ``allow_wildcard``), None or ``[]``
    nobody."""
    users = [authorized_users] if isinstance(authorized_users, str) else authorized_users or []
    user = (context or {}).get("user") or {}
    if allow_wildcard and "*" in users:
        return
    if any(u and u in users for u in (user.get("id"), user.get("email"))):
        return
    who = user.get("id") or user.get("email") or "anonymous"
    raise PermissionError(f"user {who} is not authorized to access {resource_name}")
