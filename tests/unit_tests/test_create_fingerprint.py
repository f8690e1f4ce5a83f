"""The fingerprint of a POST /sessions body sent with an Idempotency-Key (server/routers/sessions.py)."""

from __future__ import annotations

from server.routers.sessions import SessionCreate, create_fingerprint


class LaterSessionCreate(SessionCreate):
    """SessionCreate as a later release might have it: one more field, with a default."""

    priority: str = "normal"


def test_a_field_added_later_with_a_default_does_not_change_the_fingerprint() -> None:
    """Found in review: the fingerprint hashed every field with its default, so an identical body sent again after
    an upgrade that added a field got another fingerprint (a 422 idempotency_key_reused for the same request)."""
    for body in ({}, {"title": "Once"}, {"team": "interview", "title": "Once", "user_id": "u-1"}):
        assert create_fingerprint(LaterSessionCreate(**body)) == create_fingerprint(SessionCreate(**body)), body


def test_the_fingerprint_is_of_the_request_as_validated() -> None:
    assert create_fingerprint(SessionCreate(title="  Once ")) == create_fingerprint(SessionCreate(title="Once"))
    assert create_fingerprint(SessionCreate(title="   ")) == create_fingerprint(SessionCreate())
    assert create_fingerprint(SessionCreate(title="Once")) != create_fingerprint(SessionCreate(title="Twice"))
