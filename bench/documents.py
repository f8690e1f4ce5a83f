"""Reading uploaded documents: time and memory of `server.documents.extract_text` against python-docx's reader
(what uploads used before the streaming reader), on a realistic resume-sized docx and on small hostile ones.

Each case runs in a fresh subprocess (`python -m bench.documents --case NAME --reader R`), which reports its wall
time for one `extract_text` call and its peak RSS growth over the process's state just before the call (getrusage
ru_maxrss). `python -m bench.documents` runs every case and prints the section of docs/performance.md it renders.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
import zipfile
from typing import Any

MAX_CHARS = 2_000_000  # TEAMGRAPH_MAX_UPLOAD_BYTES's default: the text limit uploads get
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def docx(body: str) -> bytes:
    """A docx (deflated) whose main part's body is `body` (WordprocessingML)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Target="word/document.xml" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/officeDocument"/></Relationships>',
        )
        z.writestr("word/document.xml", f'<w:document xmlns:w="{W}"><w:body>{body}</w:body></w:document>')
    return out.getvalue()


def resume_body() -> str:
    """About 29,000 characters in 300 paragraphs, each word its own formatted run (as editors write them)."""
    words = "Led a team of four engineers moving batch jobs from cron to Airflow cutting failed runs by 70%".split()
    run = '<w:r><w:rPr><w:b w:val="0"/><w:sz w:val="22"/></w:rPr><w:t xml:space="preserve">{} </w:t></w:r>'
    paragraph = "<w:p>" + "".join(run.format(w) for w in words[:20]) + "</w:p>"
    return paragraph * 300


BOTH = ("python-docx", "teamgraph")
# label: (key, body builder, readers measured); the comment bomb is not given to python-docx, which builds the whole
# tree (the streaming reader before it was fixed grew by 819 MB on it)
CASES: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "resume docx (29 k characters, a run per word)": ("resume", resume_body, BOTH),
    "660,000 empty paragraphs (6.6 kB docx)": ("empty660k", lambda: "<w:p/>" * 660_000, BOTH),
    "1,200,000 empty paragraphs (11 kB docx)": ("empty1200k", lambda: "<w:p/>" * 1_200_000, BOTH),
    "5.57 million comments after one paragraph (57 kB docx)": (
        "comments",
        lambda: "<w:p><w:r><w:t>hi</w:t></w:r></w:p>" + "<!---->" * 5_570_000,
        ("teamgraph",),
    ),
}


def old_reader(data: bytes) -> str:
    """What uploads did before: python-docx's Document.paragraphs."""
    import docx as python_docx

    document = python_docx.Document(io.BytesIO(data))
    return "\n".join(p.text for p in document.paragraphs).strip()


def run_case(case: str, reader: str) -> dict[str, Any]:
    from server.documents import extract_text

    body = next(build for key, build, _ in CASES.values() if key == case)()
    data = docx(body)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        text = old_reader(data) if reader == "python-docx" else extract_text(data, ".docx", MAX_CHARS)
        outcome = f"{len(text):,} characters"
    except Exception as exc:
        outcome = type(exc).__name__
    took = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"seconds": took, "rss_mb": grown, "outcome": outcome, "bytes": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--reader", choices=["python-docx", "teamgraph"])
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.reader)))
        return
    rows = []
    for label, (key, _, readers) in CASES.items():
        for reader in readers:
            done = subprocess.run(
                [sys.executable, "-m", "bench.documents", "--case", key, "--reader", reader],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(f"| {label} | {reader} | {r['seconds']:.2f} s | +{r['rss_mb']:.0f} MB | {r['outcome']} |")
    print("| document | reader | time | peak RSS growth | outcome |")
    print("| --- | --- | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
