"""What README's TEAMGRAPH_CHECKPOINT_URL row says: `sqlite:///path` is relative to the working directory (a newcomer's
`sqlite:///tmp/x.db` made ./tmp/x.db), an absolute path takes four slashes."""

from __future__ import annotations

from pathlib import Path

from checkpoints.factory import sqlite_path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_three_slashes_are_relative_to_the_working_directory_four_are_absolute() -> None:
    assert sqlite_path("sqlite:///tmp/x.db") == Path("tmp/x.db") and not sqlite_path("sqlite:///tmp/x.db").is_absolute()
    assert sqlite_path("sqlite:////var/lib/teamgraph/x.db") == Path("/var/lib/teamgraph/x.db")
    assert "`sqlite:///tmp/x.db` is `./tmp/x.db`" in README and "`sqlite:////var/lib/teamgraph/x.db`" in README
