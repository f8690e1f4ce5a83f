"""`teamgraph serve --workers N`: the workers import and build the app one at a time (server/serve_worker.py), so
the first answers as soon as one worker alone would on a busy machine."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = "import server.serve_worker as w; w.app_from_env(); print('built')"


def _child(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def test_a_worker_waits_for_the_start_lock_before_it_builds_the_app(tmp_path: Path) -> None:
    env = {**os.environ, "TEAMGRAPH_CHECKPOINT_URL": "memory://", "TEAMGRAPH_DATA_DIR": str(tmp_path)}
    env.pop("TEAMGRAPH_WORKER_START_LOCK", None)
    t0 = time.monotonic()
    alone = _child(env)  # no lock: builds the app at once (how long that takes on this machine now)
    assert alone.communicate(timeout=180)[0].strip().endswith("built")
    took = time.monotonic() - t0

    lock_path = tmp_path / "start-lock"
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # another worker is starting
    waiting = _child({**env, "TEAMGRAPH_WORKER_START_LOCK": str(lock_path)})
    try:
        time.sleep(max(2 * took, 3.0))
        assert waiting.poll() is None  # still waiting for its turn
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
    assert waiting.communicate(timeout=180)[0].strip().endswith("built")
