"""The bench's persona bundles: a copy of personas/ whose safety reviewer allows draft streaming and runs no
sentence-embedding layer.

With the shipped bundles (`stream_drafts: false`) the server hides the chat responder's draft tokens from
`/stream_events` (clients only see reviewed text), so a frontend gets no token to time. The bench runs every
mode on a copy where the reviewer persona sets `stream_drafts: true`: `/stream_events` then carries the
responder's tokens, exactly what a frontend of such a tenant renders.

The reviewer's embedding layer (all-MiniLM-L6-v2 in numpy, nodes/safety_embedding.py) is switched off: it is model
compute, like the LLM calls the bench's zero-latency model stands in for, and at 10-20 ms of CPU per message it
would hide the orchestration cost the bench measures (and pad the in-process baseline the ratios divide by). Its
own cost per message is measured in docs/quality.md. Nothing else differs from personas/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles

BUNDLE_PARTS = ("agents", "teams", "tenants", "knowledge")


def make_bench_bundles(dest: Path) -> Path:
    """Copy the shipped bundles to `dest` with draft streaming allowed; validated like any bundle dir."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in BUNDLE_PARTS:
        src = Path(DEFAULT_BUNDLE_DIR) / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
    reviewer = dest / "agents" / "safety_reviewer.yaml"
    data = yaml.safe_load(reviewer.read_text())
    data.setdefault("safety", {})["stream_drafts"] = True
    data["safety"].setdefault("embedding", {})["enabled"] = False
    reviewer.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    load_bundles(dest)  # a bad copy stops the bench here, with the loader's file:line: field: reason
    return dest
