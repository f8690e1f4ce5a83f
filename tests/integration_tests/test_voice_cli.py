"""`teamgraph voice voices` and `teamgraph voice preview` (the preview against the local OpenAI-compatible server):
in the test process (typer's CliRunner), and the first listing as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration_tests.cli_runner import run_cli

TEAMGRAPH = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "teamgraph"


def run(
    workdir: Path, *args: str, provider: FakeOpenAIServer | None = None, in_a_process: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMGRAPH_")}
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING"):
        env.pop(name, None)
    env["TEAMGRAPH_CHECKPOINT_URL"] = f"sqlite:///{workdir}/tg.db"
    if provider is not None:
        env.update(OPENAI_API_KEY="sk-test-cli", OPENAI_BASE_URL=provider.base_url)
    if not in_a_process:
        return run_cli(["voice", *args], env, workdir)
    return subprocess.run(
        [str(TEAMGRAPH), "voice", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )


def test_voices_lists_the_tenants_voices_offline(tmp_path: Path) -> None:
    result = run(tmp_path, "voices", "--tenant", "veneo", in_a_process=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "voices for team veneo_chat (tenant veneo):"
    assert [line.split()[:2] for line in lines[1:]] == [
        ["marin", "Marin"],
        ["cedar", "Cedar"],
        ["*", "coral"],
        ["sage", "Sage"],
    ]
    listing = json.loads(run(tmp_path, "voices", "--tenant", "veneo", "--team", "interview", "--json").stdout)
    assert listing["default_voice"] == "cedar"
    refused = run(tmp_path, "voices", "--tenant", "demo", "--team", "veneo_chat")
    assert refused.returncode == 1 and "not enabled for tenant 'demo'" in refused.stderr


def test_preview_writes_the_audio_and_reuses_the_cache(tmp_path: Path, fake_openai: FakeOpenAIServer) -> None:
    out = tmp_path / "sage.mp3"
    first = run(
        tmp_path, "preview", "--voice", "sage", "--text", "Hello from the CLI.", "-o", str(out), provider=fake_openai
    )
    assert first.returncode == 0, first.stderr
    assert out.read_bytes() == b'ID3FAKE|["gpt-4o-mini-tts", "sage", "Hello from the CLI."]'
    assert "from the provider" in first.stdout
    assert fake_openai.voice_requests[-1]["authorization"] == "Bearer sk-test-cli"
    again = run(
        tmp_path, "preview", "--voice", "sage", "--text", "Hello from the CLI.", "-o", str(out), provider=fake_openai
    )
    assert again.returncode == 0 and "from the cache" in again.stdout
    assert len(fake_openai.voice_requests) == 1
    assert list((tmp_path / "voice-cache").glob("*.mp3"))  # beside the database, under the data directory


def test_preview_says_what_is_wrong(tmp_path: Path) -> None:
    offline = run(tmp_path, "preview", "--voice", "sage", "-o", str(tmp_path / "x.mp3"))
    assert offline.returncode == 1 and "OPENAI_API_KEY" in offline.stderr
    unknown = run(tmp_path, "preview", "--voice", "robot", "-o", str(tmp_path / "x.mp3"))
    assert unknown.returncode == 1 and "unknown voice 'robot'" in unknown.stderr
    assert not (tmp_path / "x.mp3").exists()
