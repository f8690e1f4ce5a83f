"""A scratch PostgreSQL database for the bench's Postgres modes: created at the start, dropped at the end.

    TEAMGRAPH_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres   # any database to connect to

The bench only connects there to CREATE and DROP its own database `tg_bench_<random>`; no table of that
database is read or written. Without a reachable server the Postgres modes are skipped (the report says so).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def base_url() -> str:
    return os.environ.get("TEAMGRAPH_BENCH_POSTGRES_URL", DEFAULT_URL)


@contextlib.contextmanager
def scratch_database(prefix: str = "tg_bench") -> Iterator[str | None]:
    """The URL of a new, empty database (None when Postgres cannot be reached); dropped on exit."""
    import psycopg

    url = base_url()
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        yield None
        return
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        admin.execute(f"create database {name}")
        parts = urlparse(url)
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute(f"drop database if exists {name} with (force)")
        admin.close()


@contextlib.contextmanager
def scratch_schema(url: str, prefix: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema `<prefix>_<random>` of `url`'s database (dropped on exit)."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"create schema {schema}")
        sep = "&" if "?" in url else "?"
        try:
            yield f"{url}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"drop schema {schema} cascade")
