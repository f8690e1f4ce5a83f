"""Voice previews on disk: the same preview is synthesized once and then served from the data directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

from server.settings import Settings


def cache_dir(settings: Settings) -> Path:
    """TEAMGRAPH_VOICE_CACHE_DIR, else voice-cache/ beside the SQLite database, else TEAMGRAPH_DATA_DIR/voice-cache."""
    if settings.voice_cache_dir is not None:
        return Path(settings.voice_cache_dir)
    if urlparse(settings.checkpoint_url).scheme == "sqlite":
        from checkpoints.factory import sqlite_path

        with contextlib.suppress(ValueError):
            return sqlite_path(settings.checkpoint_url).parent / "voice-cache"
    return settings.data_dir / "voice-cache"


def preview_key(*parts: object) -> str:
    """A file-name-safe key for everything that changes the audio (and the tenant, so tenants share nothing)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class PreviewCache:
    """key -> audio bytes under `root`, written atomically; least recently used entries go past `max_bytes`."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / f"{key}.{suffix}"

    def get(self, key: str, suffix: str) -> bytes | None:
        path = self._path(key, suffix)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return data

    def put(self, key: str, suffix: str, data: bytes) -> None:
        """Store a preview; a cache that cannot be written only costs a provider call next time."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=f".{suffix}")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self._path(key, suffix))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            return
        self._evict()

    def _evict(self) -> None:
        with self._lock:
            try:
                entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.root.iterdir() if p.is_file()]
            except OSError:
                return
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size
