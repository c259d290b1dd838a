"""The sign-in page of a workspace's app pages: what a person opens from a link.

A browser's navigation sends no ``Authorization`` header, so a protected page served through
Hypha (an app's ``-ui`` page, a dataset's ``-files``) answers 403 however the link is made.
Hypha also accepts an ``access_token`` cookie. This public page, at
``<server>/<workspace>/apps/bioengine-signin/#token=...&next=<page>``, moves the token from
the link's fragment (never sent to any server, so never in a log) into that cookie, scoped
to that one page (another app's page in the workspace never sees it) and ``SameSite=Strict``,
drops it from the address bar, and goes on to the page (only a page of the same workspace).
The page reads the cookie to connect its Hypha client. The sign-in page is a file of the
package, served with a Content-Security-Policy that allows its one script and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
import urllib.parse
from typing import Any

SERVICE_ID = "bioengine-signin"
PAGE = importlib.resources.files(__package__).joinpath("signin.html").read_bytes()
_SCRIPT = re.search(rb"<script>(.*?)</script>", PAGE, re.DOTALL)
assert _SCRIPT is not None, "signin.html holds its script inline"
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.group(1)).digest()).decode()
HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "content-security-policy": f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'",
}


def link(server_url: str, workspace: str, token: str, page: str) -> str:
    """The sign-in link of ``page`` (a path under ``/<workspace>/apps/``) for ``token``."""
    fragment = urllib.parse.urlencode({"token": token, "next": page})
    return f"{server_url.rstrip('/')}/{workspace}/apps/{SERVICE_ID}/#{fragment}"


def definition() -> dict[str, Any]:
    """The page as a public Hypha ASGI service (it holds nothing: the token is the link's)."""

    async def serve(args: dict[str, Any], context: dict[str, Any] | None = None) -> None:
        send = args["send"]
        raw = [(k.encode(), v.encode()) for k, v in HEADERS.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": PAGE})

    return {
        "id": SERVICE_ID,
        "type": "asgi",
        "name": "BioEngine sign-in",
        "config": {"visibility": "public", "require_context": True},
        "serve": serve,
    }
