"""Settings the kernel or the database would refuse later are refused when the settings load, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from checkpoints.turn_lock import TurnLocks
from server.settings import Settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("turn_lock_keepalive_idle_s", 40000),
        ("turn_lock_keepalive_interval_s", 40000),
        ("turn_lock_keepalive_count", 128),
        ("turn_lock_tcp_user_timeout_s", 3601),
    ],
)
def test_a_keepalive_setting_beyond_what_linux_takes_is_refused_at_load(field: str, value: int) -> None:
    """Found in review: only ge=1 bounded them; Linux caps TCP_KEEPIDLE/TCP_KEEPINTVL at 32767 and TCP_KEEPCNT at
    127, so TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S=40000 loaded, then libpq's setsockopt refused every lock
    connection (every turn a 503) while /readyz stayed green."""
    extra = {"turn_lock_tcp_user_timeout_s": 3600} if field != "turn_lock_tcp_user_timeout_s" else {}
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **{field: value, **extra})  # type: ignore[call-arg]
    assert field in str(caught.value)


def test_a_keepalive_idle_time_not_below_the_user_timeout_is_refused_at_load() -> None:
    """An idle lock connection's first probe comes after the idle time and Linux drops the connection at the
    first probe past tcp_user_timeout: idle >= user timeout would stretch "within about tcp_user_timeout"."""
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, turn_lock_keepalive_idle_s=30, turn_lock_tcp_user_timeout_s=25)  # type: ignore[call-arg]
    assert "TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S (30) must be below" in str(caught.value)  # what the operator set
    assert "TEAMGRAPH_TURN_LOCK_TCP_USER_TIMEOUT_S (25)" in str(caught.value)
    ok = Settings(_env_file=None, turn_lock_keepalive_idle_s=24, turn_lock_tcp_user_timeout_s=25)  # type: ignore[call-arg]
    assert ok.turn_lock_keepalive_idle_s == 24


def test_the_server_end_gets_a_margin_and_no_tcp_user_timeout_before_postgresql_12() -> None:
    locks = TurnLocks("postgresql://127.0.0.1/none")
    locks.keepalive_idle_s, locks.keepalive_interval_s, locks.keepalive_count, locks.tcp_user_timeout_s = 7, 3, 4, 19
    assert locks.server_keepalive_sql(150000) == (
        "; set tcp_keepalives_idle = 14; set tcp_keepalives_interval = 3; set tcp_keepalives_count = 4"
        "; set tcp_user_timeout = 38000"
    )
    assert "tcp_user_timeout" not in locks.server_keepalive_sql(110000)  # PostgreSQL 11 has no such setting


def test_a_refused_setting_names_the_variable_the_user_set_and_never_echoes_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: an aliased field came out as TEAMGRAPH_TEAMGRAPH_OPENAI_API_KEY, and any refused value was
    echoed, a key or a database password included."""
    from pydantic import SecretStr, field_validator

    from server.settings import settings_errors

    class Strict(Settings):
        @field_validator("openai_api_key")
        @classmethod
        def _short(cls, value: SecretStr | None) -> SecretStr | None:
            raise ValueError("not a key")

        @field_validator("checkpoint_url")
        @classmethod
        def _scheme(cls, value: str) -> str:
            raise ValueError("bad scheme")

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-SECRET")
    monkeypatch.setenv("TEAMGRAPH_CHECKPOINT_URL", "postgresql://u:pw-SECRET@h/db")
    with pytest.raises(ValidationError) as caught:
        Strict(_env_file=None)  # type: ignore[call-arg]
    lines = settings_errors(caught.value)
    assert "SECRET" not in "\n".join(lines), lines
    assert "OPENAI_API_KEY: not a key" in lines
    assert "TEAMGRAPH_CHECKPOINT_URL='postgresql://u:***@h/db': bad scheme" in lines


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://u:pw-SECRET@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@ss-SECRET@h/db", "postgresql://u:***@h/db"),  # an unescaped @ in the password
        ("postgresql://u@h/db?sslmode=require&password=SECRET", "postgresql://u@h/db?sslmode=require&password=***"),
        (
            "postgresql://u@h/db?sslpassword=SECRET&application_name=tg",
            "postgresql://u@h/db?sslpassword=***&application_name=tg",
        ),
        ("host=h dbname=db password=SECRET user=u", "host=h dbname=db password=*** user=u"),
        ("host=h password = 'a SECRET \\' phrase' dbname=db", "host=h password = *** dbname=db"),
        ("host=h password=a://SECRET", "host=h password=***"),  # a keyword string, though it holds ://
        ("https://u:SECRET@[x/", "https://u:***@[x/"),  # urlsplit raises on the unclosed [
        # libpq reads up to the @: a ? or # in the password is no query or fragment (urlsplit saw no password)
        ("postgresql://postgres:hunter2#SECRET@127.0.0.1:5432/test", "postgresql://postgres:***@127.0.0.1:5432/test"),
        ("postgresql://u:pa?ss/SECRET@h/db?password=SECRET", "postgresql://u:***@h/db?password=***"),
        ("POSTGRESQL://u:SECRET@h/db", "POSTGRESQL://u:***@h/db"),  # the scheme as typed
        (" postgresql://u:SECRET@h/db", " postgresql://u:***@h/db"),
        ("host=h password=x\\ SECRET dbname=db", "host=h password=*** dbname=db"),  # libpq's x\ y is "x y"
        ("postgresql://u:SECRET@[::1]:5432,[::2]/db", "postgresql://u:***@[::1]:5432,[::2]/db"),
        ("postgresql://u:p%40SECRET@h/db", "postgresql://u:***@h/db"),
        ("sqlite:///./data/teamgraph.db", "sqlite:///./data/teamgraph.db"),
    ],
)
def test_a_database_url_is_shown_without_its_secrets(given: str, shown: str) -> None:
    """Found in review: only a password before the @ was masked, so `?password=` (which libpq takes) and a keyword
    string's `password=` were printed on every `teamgraph serve` start (the `checkpoints:` line)."""
    from checkpoints.storage import display_url

    assert display_url(given) == shown


def test_a_refused_url_like_value_that_does_not_parse_is_one_line_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: the masking called urlparse unguarded; its ValueError on an unclosed [ escaped the refusal
    (exit 1 and a traceback holding pydantic's input_value with the password). No urllib parse now."""
    from server.settings import settings_errors

    monkeypatch.setenv("TEAMGRAPH_LOG_FORMAT", "https://u:PW-SECRET@[x/")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    lines = settings_errors(caught.value)
    assert len(lines) == 1 and lines[0].startswith("TEAMGRAPH_LOG_FORMAT='https://u:***@[x/': "), lines
