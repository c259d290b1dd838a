"""Who may call a service (bridge/access.py): the identity a call is authorized as."""

from __future__ import annotations

import pytest

from bioengine_operator.bridge import access

ALICE = {"user": {"id": "alice", "email": "alice@example.org", "is_anonymous": False}}


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        (["alice"], "alice"),
        # Listed by email: the dataset server checks the same list, so it must get the email.
        (["alice@example.org"], "alice@example.org"),
        (["*"], "alice"),
        ([], "alice"),
    ],
)
def test_a_caller_is_authorized_as_the_identity_the_list_names(
    listed: list[str], expected: str
) -> None:
    assert access.authorize(listed, ALICE, "svc") == expected


def test_an_unlisted_caller_is_refused_with_who_and_what() -> None:
    with pytest.raises(PermissionError, match=r"user alice \(alice@example.org\) .* svc"):
        access.authorize(["bob@example.org"], ALICE, "svc")
