"""Who may call a service: ``authorizedUsers`` against the caller Hypha vouches for.

Hypha first applies the service's visibility (a protected service is reachable only from
its workspace and from the ``authorized_workspaces`` it names); the bridge then asks
Hypha for the request context and checks the caller's user id and email. An empty list
adds nothing to the visibility rule; ``"*"`` allows every caller that reached the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EVERYONE = "*"


def user_list(text: str) -> tuple[str, ...]:
    """The users of a comma-separated list, as flags and environment variables give them."""
    return tuple(u.strip() for u in text.split(",") if u.strip())


def caller_id(context: dict[str, Any] | None) -> str:
    """The id of the user Hypha vouches for ("anonymous" without one)."""
    return str(((context or {}).get("user") or {}).get("id") or "anonymous")


def user_workspaces(authorized_users: Sequence[str]) -> list[str]:
    """Personal Hypha workspaces (``ws-user-<id>``) of the listed user ids (not emails), so
    those users can reach a protected service from their own workspace."""
    return [f"ws-user-{u}" for u in authorized_users if u != EVERYONE and "@" not in u]


def authorize(authorized_users: Sequence[str], context: dict[str, Any] | None, service: str) -> str:
    """Return who the caller is authorized as, or raise PermissionError saying why the call
    is refused: its id, or its email where the list names the email, so that the dataset
    server, which checks the same list, recognizes it too."""
    user = (context or {}).get("user") or {}
    caller = caller_id(context)
    if not authorized_users or EVERYONE in authorized_users:
        return caller
    if user.get("is_anonymous") or not user.get("id"):
        raise PermissionError(
            f"{service} does not accept anonymous calls: connect to Hypha with a token of one "
            "of its authorized users"
        )
    if caller in authorized_users:
        return caller
    if user.get("email") and user["email"] in authorized_users:
        return str(user["email"])
    raise PermissionError(
        f"user {caller} ({user.get('email') or 'no email'}) is not authorized to call {service}"
    )
