"""structlog: JSON lines on stdout (console rendering on a TTY or when asked), secrets scrubbed from every line."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-+/=]{4,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\blsv2_[A-Za-z0-9_\-]{8,}"),
]
# one search first: nearly every value holds no secret, and three substitutions per string per line add up
_ANY_SECRET = re.compile("|".join(f"(?:{p.pattern})" for p in _SECRET_PATTERNS[1:]) + r"|(?i:bearer\s)")
_SECRET_KEYS = {"authorization", "x-api-key", "api_key", "openai_api_key", "password", "token", "key"}
_CONTENT_KEYS = {"content", "messages", "input", "output", "resume", "job_description", "answer"}


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        if _ANY_SECRET.search(value):
            for pattern in _SECRET_PATTERNS:
                value = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", value)
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, "[redacted]")
        return value
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v, secrets) for v in value]
    return value


_PLAIN = (int, float, bool, type(None))  # values no scrubbing changes
_CACHE_LIMIT = 2048  # entries per cache below; emptied when full (the same few keys and ids recur on every line)
_SHORT = 128  # only strings up to this length are remembered as clean


def make_scrubber(secrets: tuple[str, ...], debug_content: bool) -> Any:
    """A processor that drops secret fields, masks secret-looking strings, and keeps message text to DEBUG."""
    # keys that are neither secret nor content, and short strings that hold no secret: what every line repeats
    # (event names, field names, tenant, team, ids) is checked once, not on every line
    plain_keys: set[str] = set()
    clean: set[str] = set()

    def scrub_str(value: str) -> str:
        scrubbed = _scrub_value(value, secrets)
        if scrubbed is value and len(value) <= _SHORT:
            if len(clean) >= _CACHE_LIMIT:
                clean.clear()
            clean.add(value)
        return scrubbed

    def scrub(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        for key in list(event):
            if key in plain_keys:
                continue
            if key.lower() in _SECRET_KEYS:
                event[key] = "[redacted]"
            elif key in _CONTENT_KEYS:
                if not (debug_content and method == "debug"):
                    event.pop(key)
            elif len(key) <= _SHORT:
                if len(plain_keys) >= _CACHE_LIMIT:
                    plain_keys.clear()
                plain_keys.add(key)
        out: dict[str, Any] = {}
        for key, value in event.items():
            kind = type(value)
            if kind is str:
                out[key] = value if value in clean else scrub_str(value)
            elif kind in _PLAIN:
                out[key] = value
            else:
                out[key] = _scrub_value(value, secrets)
        return out

    return scrub


def add_exception(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """An exception on a line becomes its type, message and stack (`exc_info: true` alone diagnoses nothing)."""
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return event
    event.setdefault("error_type", exc_info[0].__name__)
    event.setdefault("error", str(exc_info[1]))
    event["exception"] = "".join(traceback.format_exception(*exc_info))
    return event


_STDLIB_HANDLER_NAME = "teamgraph"


def stdlib_formatter(renderer: str = "auto", secrets: tuple[str, ...] = ()) -> logging.Formatter:
    """A logging.Formatter that renders standard-library records like our own lines (JSON or console)."""
    console = renderer == "console" or (renderer == "auto" and sys.stdout.isatty())
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_exception,
            make_scrubber(secrets, debug_content=False),
            structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer(),
        ],
    )


def uvicorn_log_config(level: str = "INFO", renderer: str = "auto") -> dict[str, Any]:
    """uvicorn's log_config: its lines (in the supervisor and in every worker) in our format on stdout, and no
    access lines (the middleware's http_request line says more)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"teamgraph": {"()": f"{__name__}.stdlib_formatter", "renderer": renderer}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "teamgraph", "stream": "ext://sys.stdout"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure_logging(level: str = "INFO", renderer: str = "auto", secrets: tuple[str, ...] = ()) -> None:
    """JSON lines unless renderer is 'console' (or 'auto' on a TTY). `secrets`: exact strings never to print.
    Standard-library loggers (uvicorn's own lines, psycopg's pool, ...) go through the same processors, so
    every line on stdout has one format and is scrubbed the same way."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    console = renderer == "console" or (renderer == "auto" and sys.stdout.isatty())
    scrubber = make_scrubber(secrets, debug_content=numeric <= logging.DEBUG)
    render = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_exception,
            scrubber,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.name = _STDLIB_HANDLER_NAME
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, add_exception, scrubber, render],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == _STDLIB_HANDLER_NAME]:
        root.removeHandler(old)  # configured again (a second app in one process): one handler, the newest
    root.addHandler(handler)
    handler.setLevel(numeric)
    # libraries (httpx, psycopg's pool, ...) speak up from WARNING: their INFO lines would repeat ours
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn's default config gives these loggers handlers of their own (plain text): use ours instead;
        # its start and stop lines keep the configured level
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(numeric)
    # no access lines: the middleware's http_request line says more (route template, tenant, ids)
    logging.getLogger("uvicorn.access").handlers.clear()
    logging.getLogger("uvicorn.access").propagate = False


if not structlog.is_configured():
    # until the server configures logging, keep library users (CLI, scripts) quiet: warnings only, on stderr
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


class _Logger:
    """structlog's "teamgraph" logger, bound once per logging configuration. structlog's lazy proxy (what
    `get_logger` returns while `cache_logger_on_first_use` is off, as it must be here: the server configures logging
    when it starts, possibly more than once in a process) builds a new bound logger, wrapper and output logger on
    every call; this keeps the one it built until `structlog.configure` installs something else."""

    __slots__ = ("_bound", "_key")

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        config = structlog.get_config()
        # the processors list by identity: `structlog.testing.capture_logs` edits it in place, which a bound
        # logger sees (it holds the list), while `configure(processors=[...])` installs a new one
        key = (config["wrapper_class"], config["logger_factory"], config["context_class"], id(config["processors"]))
        if key != self._key:
            self._bound, self._key = structlog.get_logger("teamgraph").bind(), key
        return getattr(self._bound, name)


log: Any = _Logger()
