"""`python -m evals` (or `make eval`): run the guardrail, the scorer and the question checks; write docs/quality.md.

`python -m evals --section guardrail` runs only the named section(s) and prints them (nothing is written unless
`--out` is given): docs/quality.md is written by the full run, or, with `--update docs/quality.md`, by a run of some
sections, which replace the report's header and those sections and keep its other sections as they were.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evals.harness import guardrail_section, question_section, run_all, scorer_section, splice_sections

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
    parser.add_argument(
        "--update",
        type=Path,
        help="with --section: print the sections and put them (and the header) in place of those of this report",
    )
    args = parser.parse_args()
    if args.update and not args.section:
        parser.error("--update needs --section (a full run rewrites the report)")
    report = run_all([sections[name] for name in args.section] if args.section else None)
    if args.update:
        print(report)
        args.update.write_text(splice_sections(args.update.read_text(encoding="utf-8"), report), encoding="utf-8")
        print(f"updated {args.update}")
        return
    if args.section and args.out is None:
        print(report)
        return
    out = args.out or REPO / "docs" / "quality.md"
    out.write_text(report, encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
