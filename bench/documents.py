"""Reading uploaded documents: time and memory of `server.documents.extract_text` against python-docx's reader
(what uploads used before the streaming reader), on a realistic resume-sized docx and on small hostile ones.

Each case runs in a fresh subprocess (`python -m bench.documents --case NAME --reader R`), which reports its wall
time for one `extract_text` call and its peak RSS growth over the process's state just before the call (getrusage
ru_maxrss). `python -m bench.documents` runs every case and prints the section of docs/performance.md it renders.

`python -m bench.documents --reader-process` times the upload path instead: `read_document` (extract_text in a
reader process forked by multiprocessing's forkserver, killed at its time limit) against `extract_text` in the
calling process, on a resume docx, small and large PDFs and a PDF slower than the limit, each the median of a few
runs after a warm-up (the forkserver's start, timed apart). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
import zipfile
import zlib
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


def pdf(pages: int, content: bytes, font: bytes) -> bytes:
    """A PDF of `pages` pages sharing one deflated content stream, font F1 being `font` (objects numbered from 1)."""
    stream = zlib.compress(content, 9)
    kids = " ".join(f"{6 + i} 0 R" for i in range(pages)).encode()
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
    page += b"/Resources << /Font << /F1 5 0 R >> >> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%b] /Count %d >>" % (kids, pages),
        b"<< >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%b\nendstream" % (len(stream), stream),
        font,
        *[page] * pages,
    ]
    return pdf_file(objects)


def pdf_file(objects: list[bytes]) -> bytes:
    """A PDF of `objects` (numbered from 1, the first the catalog) with its cross-reference table."""
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%b\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def text_pdf(pages: int, words: int) -> bytes:
    """`pages` pages each showing `words` times "Python developer " in Helvetica."""
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    return pdf(pages, b"BT /F1 12 Tf 72 720 Td " + b"(Python developer ) Tj " * words + b"ET", font)


def slow_pdf(pages: int) -> bytes:
    """`pages` pages each parsing a million `0 Tc` operators that draw nothing (tests' slow_pdf)."""
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    return pdf(pages, b"BT /F1 12 Tf " + b"0 Tc " * 1_000_000 + b"ET", font)


PROCESS_CASES: dict[str, tuple[str, Any, int]] = {  # label: (kind, builder, runs)
    "resume docx (29 k characters)": (".docx", lambda: docx(resume_body()), 5),
    "2-page pdf (3,400 characters)": (".pdf", lambda: text_pdf(2, 100), 5),
    "pdf of 1.7 million characters (2 pages)": (".pdf", lambda: text_pdf(2, 50_000), 1),
    "slow pdf: 40 pages of a million operators (14 kB)": (".pdf", lambda: slow_pdf(40), 1),
}


def reader_process_table(seconds: float) -> None:
    from server.documents import extract_text, read_document

    def timed(read: Any, data: bytes, kind: str) -> tuple[float, str]:
        started = time.perf_counter()
        try:
            outcome = f"{len(read(data, kind)):,} characters"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        return time.perf_counter() - started, outcome

    in_process = lambda data, kind: extract_text(data, kind, MAX_CHARS)  # noqa: E731
    apart = lambda data, kind: read_document(data, kind, MAX_CHARS, seconds)  # noqa: E731
    first, _ = timed(apart, text_pdf(1, 1), ".pdf")
    print(f"forkserver start and first reader: {first:.2f} s; reader time limit {seconds:g} s\n")
    print("| document | extract_text in the process | read_document (reader process) | outcome (reader process) |")
    print("| --- | ---: | ---: | --- |")
    for label, (kind, build, runs) in PROCESS_CASES.items():
        data = build()
        here = statistics.median(timed(in_process, data, kind)[0] for _ in range(runs))
        times, outcome = zip(*(timed(apart, data, kind) for _ in range(runs)), strict=True)
        print(f"| {label} | {here:.3f} s | {statistics.median(times):.3f} s | {outcome[-1]} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--reader", choices=["python-docx", "teamgraph"])
    parser.add_argument("--reader-process", action="store_true", help="time the upload path (read_document)")
    parser.add_argument("--seconds", type=float, default=15.0, help="read_document's limit (the setting's default)")
    args = parser.parse_args()
    if args.reader_process:
        reader_process_table(args.seconds)
        return
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
