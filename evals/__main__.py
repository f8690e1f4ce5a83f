"""`python -m evals` (or `make eval`): run the guardrail, the scorer and the question checks; write docs/quality.md.

`python -m evals --section guardrail` runs only the named section(s) and prints them (nothing is written unless
`--out` is given): docs/quality.md is written by the full run only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evals.harness import guardrail_section, question_section, run_all, scorer_section

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from evals.scorer_public import public_scorer_section

    sections = {
        "guardrail": guardrail_section,
        "scorer": scorer_section,
        "public_scorer": public_scorer_section,
        "questions": question_section,
    }
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, help="where to write the report (default: docs/quality.md; with --section: print)"
    )
    parser.add_argument(
        "--section", action="append", choices=sorted(sections), help="run only this section (repeatable)"
    )
    args = parser.parse_args()
    report = run_all([sections[name] for name in args.section] if args.section else None)
    if args.section and args.out is None:
        print(report)
        return
    out = args.out or REPO / "docs" / "quality.md"
    out.write_text(report, encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
