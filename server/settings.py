"""The one Settings object: environment variables with the TEAMGRAPH_ prefix, or a .env file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.sources import ENV_FILE_SENTINEL

from checkpoints.storage import display_url
from personas.loader import DEFAULT_BUNDLE_DIR
from server.variables import OTHER_VARIABLES


class Settings(BaseSettings):
    # populate_by_name: Settings(openai_api_key=...) works too, not only the aliased environment variables
    model_config = SettingsConfigDict(env_prefix="TEAMGRAPH_", env_file=".env", extra="ignore", populate_by_name=True)

    _database_in_data_dir: bool = PrivateAttr(False)  # checkpoint_url is the default <data_dir>/teamgraph.db
    # the .env file(s) this instance read: `Settings(_env_file=...)` when given (None: none), else model_config's;
    # tenant keys named under `env:` are read from the same file (server/auth.key_environ)
    _env_files: Any = PrivateAttr(None)

    if not TYPE_CHECKING:  # hidden from mypy, whose pydantic plugin then still checks Settings(...)'s arguments

        def __init__(self, **values: Any) -> None:
            env_file = values.get("_env_file", ENV_FILE_SENTINEL)
            super().__init__(**values)
            self._env_files = type(self).model_config.get("env_file") if env_file is ENV_FILE_SENTINEL else env_file

    @property
    def env_files(self) -> list[Path]:
        """The .env files this instance read (a later one wins), as given to it or by its class."""
        files = self._env_files
        return [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files or ()]

    data_dir: Path = Field(
        Path("data"),
        description="Where embedded data lives: the default SQLite database (teamgraph.db) and the voice cache.",
    )
    checkpoint_url: str = Field(
        "sqlite:///./data/teamgraph.db",
        description="sqlite:///path (embedded default: <data_dir>/teamgraph.db), postgresql://... (shared by "
        "replicas) or memory://",
    )
    personas_dir: Path = Field(DEFAULT_BUNDLE_DIR, description="Directory holding agents/, teams/, tenants/.")
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("TEAMGRAPH_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    model_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("TEAMGRAPH_MODEL_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible endpoint used by every persona without its own base_url.",
    )
    host: str = Field("127.0.0.1", description="Address `teamgraph serve` binds.")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="`teamgraph serve` worker processes. Unset, serve picks default_workers(checkpoint_url): one "
        "per CPU core (at most 8) on PostgreSQL, 1 on SQLite and memory://.",
    )
    playground: bool = Field(False, description="Serve LangServe's playground pages under /teams/{team}/playground.")
    max_upload_bytes: int = Field(2_000_000, ge=1, description="Largest resume / job description upload.")
    document_read_timeout_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="Longest a pdf or docx upload may take to read: its reader process is then killed and the "
        "upload answers 422 unreadable_document, nothing stored.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body (JSON) on any route; uploads: max_upload_bytes + 64 KiB."
    )
    shutdown_wait_s: int = Field(
        30,
        ge=1,
        le=3600,
        description="On SIGTERM, how long `teamgraph serve` waits for requests still being answered before it cuts "
        "them (a keyed /stream's turn goes on detached; others end as at a crash, a keyed /invoke's key then "
        "answering 409 idempotent_turn_outcome_unknown or running again). Unbounded before: one client that never "
        "finished sending its body kept the server from stopping.",
    )
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="How long `teamgraph serve` keeps an idle HTTP connection open for the client's next request. "
        "Above a proxy's or client's own idle timeout (60 s on AWS ALB and common nginx setups), so the client "
        "closes first; below it, a request sent on a connection the server is closing is lost "
        "(uvicorn's default is 5 s).",
    )
    log_level: str = Field(
        "INFO",
        description="DEBUG, INFO, WARNING (or WARN), ERROR or CRITICAL, in any case; DEBUG also logs message content, "
        "never keys or tokens.",
    )
    storage_watch_s: float = Field(
        1.0,
        ge=0.1,
        le=3600,
        description="How often a server process checks that its database file or tables are still there "
        "(checkpoints/self_repair.py); at least 0.1 s (0 would keep a core busy).",
    )
    log_format: str = Field("auto", pattern="^(auto|json|console)$", description="auto: console on a TTY, else JSON")
    durability: Literal["exit", "async", "sync"] = Field(
        "exit",
        description="When a turn's state is checkpointed: exit = once, when the turn ends (also on error); "
        "async/sync = after every node. exit writes about 5x fewer bytes per turn; a process that dies mid-turn "
        "loses that turn's state (its audit entries and the session stay).",
    )
    turn_wait_s: float = Field(
        60.0, gt=0, description="How long a turn waits for the previous turn on the same session before 409."
    )
    db_timeout_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="PostgreSQL: longest connect, or wait for a pooled connection, before a request answers "
        "503 storage_unavailable.",
    )
    db_statement_timeout_s: float = Field(15.0, gt=0, description="PostgreSQL: longest single statement.")
    # Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 s and TCP_KEEPCNT at 127: a larger value passes libpq
    # to setsockopt, which refuses it, and every lock connection (so every turn) would fail while /readyz is green
    turn_lock_keepalive_idle_s: int = Field(
        10, ge=1, le=32767,
        description="PostgreSQL turn lock connections: TCP keepalive probes start after this idle time; below "
        "turn_lock_tcp_user_timeout_s.",
    )  # fmt: skip
    turn_lock_keepalive_interval_s: int = Field(
        5, ge=1, le=32767, description="PostgreSQL turn lock connections: seconds between probes."
    )
    turn_lock_keepalive_count: int = Field(
        3, ge=1, le=127,
        description="PostgreSQL turn lock connections: unanswered probes before the connection is dropped (Linux "
        "lets turn_lock_tcp_user_timeout_s decide instead).",
    )  # fmt: skip
    turn_lock_tcp_user_timeout_s: float = Field(
        25.0,
        ge=1,
        le=3600,
        description="PostgreSQL turn lock connections: longest wait for the database to acknowledge data or a "
        "probe before the connection is dropped (a silent network partition is seen within about this long, at "
        "most this plus one keepalive interval).",
    )
    retention_interval_s: float = Field(
        3600.0, ge=0, description="How often the server applies the tenants' retention (one replica at a time); "
        "0 turns the background pass off (`teamgraph sessions prune` still applies it).",
    )  # fmt: skip
    voice_cache_dir: Path | None = Field(
        None, description="Voice preview cache; default: voice-cache/ beside the SQLite database, else ./data."
    )
    voice_cache_max_mb: float = Field(200.0, gt=0, description="Oldest previews are evicted beyond this size.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose browser pages may call the API (CORS), e.g. "
        '["https://app.example.com"] or a comma-separated list; empty: same-origin only.',
    )
    voice_preview_max_chars: int = Field(300, ge=1, le=4096, description="Longest text a voice preview speaks.")
    allow_dev_keys: bool = Field(
        False,
        description="Let `teamgraph serve` listen on a non-loopback address while a development key (one the "
        "README publishes) is enabled. Leave off in any deployment others can reach.",
    )
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics needs 'Authorization: Bearer <token>'; unset, only loopback callers."
    )

    @model_validator(mode="after")
    def _default_database_in_data_dir(self) -> Settings:
        if "checkpoint_url" not in self.model_fields_set:
            self.checkpoint_url = f"sqlite:///{self.data_dir}/teamgraph.db"
            self._database_in_data_dir = True  # messages about the database name TEAMGRAPH_DATA_DIR
        return self

    @property
    def database_variable(self) -> str:
        """The setting that put the database where it is (what a message about it names)."""
        return "TEAMGRAPH_DATA_DIR" if self._database_in_data_dir else "TEAMGRAPH_CHECKPOINT_URL"

    @model_validator(mode="after")
    def _keepalive_idle_below_user_timeout(self) -> Settings:
        """An idle lock connection sends its first probe after the idle time, and Linux drops it at the first probe
        past tcp_user_timeout: an idle time at or above the user timeout would stretch "a partition is seen within
        about tcp_user_timeout" to idle + interval, so it is refused here rather than documented away."""
        if self.turn_lock_keepalive_idle_s >= self.turn_lock_tcp_user_timeout_s:
            raise ValueError(
                f"TEAMGRAPH_TURN_LOCK_KEEPALIVE_IDLE_S ({self.turn_lock_keepalive_idle_s}) must be below "
                f"TEAMGRAPH_TURN_LOCK_TCP_USER_TIMEOUT_S ({self.turn_lock_tcp_user_timeout_s:g}): the first keepalive "
                "probe would come after the user timeout, and a partition would be seen only after idle + interval"
            )
        return self

    @field_validator("checkpoint_url")
    @classmethod
    def _plain_scheme(cls, value: str) -> str:
        """` POSTGRESQL://...` works as `postgresql://...`: our scheme checks ignore case and leading spaces, libpq
        does not (it read such a URL as a keyword string, and its error echoed the password)."""
        scheme, sep, rest = value.strip().partition("://")
        return f"{scheme.lower()}{sep}{rest}" if sep else value.strip()

    @field_validator("checkpoint_url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        """A URL the storage cannot use is one line at start for every command (it was a traceback of the first
        command that opened the database; `sqlite:///:memory:` failed later with 'no such table')."""
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme not in ("sqlite", "postgres", "postgresql", "memory"):
            raise ValueError(
                f"unsupported scheme {scheme + '://' if scheme else '(none)'}: use sqlite:///path.db, "
                "postgresql://user@host:port/db or memory://"
            )
        if scheme == "sqlite":
            path = value[len("sqlite:///") :] if value.startswith("sqlite:///") else ""
            if not path.strip():
                raise ValueError("give a file, e.g. sqlite:///./data/teamgraph.db (or sqlite:////absolute/path.db)")
            if path.startswith(":memory:") or "mode=memory" in path:
                raise ValueError(
                    "an in-memory SQLite database lasts one connection and Teamgraph opens several: use memory://"
                )
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(value.strip().upper(), value.strip().upper())
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("use DEBUG, INFO, WARNING (or WARN), ERROR or CRITICAL (any case)")
        return level

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """`https://a.example,https://b.example` (or a JSON list) from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip().rstrip("/") for o in text.split(",") if o.strip()]
        return value


MAX_DEFAULT_WORKERS = 8


def default_workers(checkpoint_url: str) -> int:
    """How many worker processes `teamgraph serve` runs when neither --workers nor TEAMGRAPH_WORKERS says.

    On PostgreSQL, one per CPU core this process may use (its CPU affinity and its cgroup's CPU quota; at most
    8). One Python process runs its turns on one
    core, and on Postgres workers share nothing but the database, exactly like replicas (a session's turn lock
    is an advisory lock keyed by the session, the audit chain's lock is per tenant): docs/performance.md
    measures two replicas at the same CPU per turn and the same p50 at concurrency 1 as one, with 1.5-1.7x the
    turns/s at concurrency 32 on two cores. The cost is one process's memory per worker, and tenant `limits`
    are counted per process.
    On SQLite, 1: workers would share one file and its single writer lock, and a deleted database file is
    recreated in place only by a lone process (with siblings each worker exits and is replaced,
    checkpoints/self_repair.py); `--workers N` still works there and helps at high concurrency.
    memory:// keeps everything in one process, so 1.
    """
    if urlparse(checkpoint_url).scheme not in ("postgres", "postgresql"):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:  # a container limited to fewer CPUs than the machine shows
        cores = min(cores, quota)
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def cgroup_cpu_quota() -> int | None:
    """Whole CPUs the cgroup (v2) quota allows this process (`cpu.max`: "<quota> <period>", rounded down, at least
    1), or None without a quota ("max") or a cgroup file: a pod limited to 1 CPU on a 16-core node gets 1 worker."""
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        return None


def serve_workers(settings: Settings, flag: int | None = None) -> tuple[int, str]:
    """`teamgraph serve`'s worker count and where it came from (for its start-up line): --workers, then
    TEAMGRAPH_WORKERS (environment or .env), then default_workers."""
    if flag:
        return flag, "--workers"
    if "workers" in settings.model_fields_set:
        return settings.workers, "TEAMGRAPH_WORKERS"
    count = default_workers(settings.checkpoint_url)
    if urlparse(settings.checkpoint_url).scheme in ("postgres", "postgresql"):
        return count, "default on PostgreSQL: one per CPU core, at most 8; TEAMGRAPH_WORKERS=1 for one"
    return count, "default on SQLite and memory://; TEAMGRAPH_WORKERS=N for more"


def env_name(name: str) -> str:
    """The environment variable (or .env line) a setting is read from: `name` is a field of Settings or, for a
    field with aliases, the alias pydantic-settings reports (its first); the alias the user set is named."""
    field = _field(name)
    if field is None:
        return name.upper() if name.upper().startswith("TEAMGRAPH_") else f"TEAMGRAPH_{name.upper()}"
    alias = Settings.model_fields[field].validation_alias
    choices = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
    if not choices:
        return f"TEAMGRAPH_{field.upper()}"
    return next((c for c in choices if c in os.environ), choices[0])


def _field(name: str) -> str | None:
    """The Settings field `name` is, or is an alias of."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if name == field or (isinstance(alias, AliasChoices) and name in alias.choices):
            return field
    return None


def _shown(name: str, value: object) -> str | None:
    """The value as a message may show it: never a secret, never a password in a URL or connection string."""
    field = _field(name)
    annotation = str(Settings.model_fields[field].annotation) if field else ""
    if "SecretStr" in annotation or not isinstance(value, str | int | float):
        return None
    if isinstance(value, str):  # a URL's password and secret parameters, or a keyword string's password=
        value = display_url(value)
    return repr(value)


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting, naming its environment variable (not the Python field), with the value
    unless it is a secret (a URL's password masked)."""
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = error["loc"]
        if not loc:
            lines.append(message)
            continue
        name = env_name(str(loc[0]))
        item = "".join(f"[{part}]" for part in loc[1:])  # an item of a list setting
        shown = _shown(str(loc[0]), error["input"])
        lines.append(f"{name}{item}={shown}: {message}" if shown is not None else f"{name}{item}: {message}")
    return lines


TENANT_KEY_VARIABLE = re.compile(r"^TEAMGRAPH_[A-Z0-9_]+_(API|ADMIN)_KEY$")


def known_variables() -> set[str]:
    """Every TEAMGRAPH_ variable something reads: the settings (and their aliases) and OTHER_VARIABLES."""
    names = set(OTHER_VARIABLES)
    for field, info in Settings.model_fields.items():
        names.add(f"TEAMGRAPH_{field.upper()}")
        if isinstance(info.validation_alias, AliasChoices):
            names.update(c.upper() for c in info.validation_alias.choices if isinstance(c, str))
    return {n for n in names if n.startswith("TEAMGRAPH_")}


ENV_NAME = re.compile(r"""\benv\s*:\s*['"]?([A-Za-z_][A-Za-z0-9_]*)""")


def key_variables(personas_dir: Path) -> set[str]:
    """The variables the tenant bundles read API keys from (`api_keys: [{env: NAME}]`); from a bundle that does not
    parse, the names after `env:` in its text (loading the bundles reports its problem)."""
    import yaml

    names: set[str] = set()
    for path in sorted((personas_dir / "tenants").glob("*.y*ml")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        try:
            tenant = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError):  # ValueError: a value YAML cannot hold, e.g. the date 2026-13-45
            # loading the bundles reports the problem; the names the file gives under `env:` still count
            names.update(name.upper() for name in ENV_NAME.findall(text))
            continue
        keys = tenant.get("api_keys") if isinstance(tenant, dict) else None
        for key in keys if isinstance(keys, list) else []:
            if isinstance(key, dict) and isinstance(key.get("env"), str):
                names.add(key["env"].upper())
    return names


def _closest(name: str, known: list[str], cutoff: float) -> str | None:
    """The known name closest to `name`, compared without the TEAMGRAPH_ prefix they all share."""
    import difflib

    prefix = len("TEAMGRAPH_")
    by_rest = {n[prefix:]: n for n in known}
    close = difflib.get_close_matches(name[prefix:], list(by_rest), n=1, cutoff=cutoff)
    return by_rest[close[0]] if close else None


def _one_slip(a: str, b: str) -> bool:
    """a and b differ by at most one typing slip: a letter wrong, missing or extra, or two neighbours swapped."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a_rest, b_rest = a[start:], b[start:]
    return (
        a_rest[1:] == b_rest[1:]  # one wrong
        or a_rest[1:] == b_rest  # one extra in a
        or a_rest == b_rest[1:]  # one missing from a
        or (len(a_rest) >= 2 and a_rest[:2] == b_rest[1::-1] and a_rest[2:] == b_rest[2:])  # two swapped
    )


def unknown_variables(
    settings: Settings, environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> list[str]:
    """One line per TEAMGRAPH_ variable (environment or .env) that nothing reads, with the closest known name: a
    misspelled TEAMGRAPH_CHECKPIONT_URL was ignored, and each replica of a fleet used a SQLite file of its own."""
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    env_file = Path(".env") if env_file is None else env_file
    seen = {name: "" for name in environ}
    if env_file.is_file():
        seen.update({name: f" (in {env_file})" for name in dotenv_values(env_file) if name not in seen})
    settings_names = sorted(known_variables())
    known = set(settings_names) | key_variables(settings.personas_dir)
    lines = []
    for name, where in sorted(seen.items()):
        upper = name.upper()
        if not upper.startswith("TEAMGRAPH_") or upper in known:
            continue
        # a tenant key named the usual way (TEAMGRAPH_<TENANT>_API_KEY, ..._ADMIN_KEY) may be meant for bundles
        # elsewhere, unless it is one slip of the keys from a setting (TEAMGRAPH_OPENIA_API_KEY): a similar name
        # is not enough (TEAMGRAPH_OPEN_API_KEY is tenant open's key)
        if TENANT_KEY_VARIABLE.match(upper) and not any(_one_slip(upper, n) for n in settings_names):
            continue
        close = _closest(upper, sorted(known), 0.6)
        hint = f"; did you mean {close}?" if close else " (see the settings in README.md)"
        lines.append(f"{name}{where}: not a Teamgraph setting{hint}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
