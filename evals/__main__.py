"""`python -m evals` (or `make eval`): run the guardrail, the scorer and the question checks; write docs/quality.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from evals.harness import run_all

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "quality.md", help="where to write the report")
    args = parser.parse_args()
    report = run_all()
    args.out.write_text(report, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
