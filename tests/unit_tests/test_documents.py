"""server/documents.py reads a docx by streaming its main part: the text must be what python-docx read before."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import docx
import pytest
from docx.enum.text import WD_BREAK
from docx.shared import Pt

from server.documents import UnreadableDocument, extract_text


def formatted_docx() -> bytes:
    """A docx as Word users make them: a title, runs with their own formatting, tabs and breaks, an empty
    paragraph, a table, a header; then, by hand, a hyperlink, the rarer run elements, a revision mark and a
    content control (python-docx read neither of the last two)."""
    document = docx.Document()
    document.add_heading("Alex Kim", 0)
    p = document.add_paragraph("Plain ")
    p.add_run("bold").bold = True
    run = p.add_run(" italic\tafter a tab")
    run.italic, run.font.size = True, Pt(13)
    run.add_break()
    p.add_run("after a line break").add_break(WD_BREAK.PAGE)
    document.add_paragraph("  leading and trailing spaces  ")
    document.add_paragraph("")
    document.add_table(rows=2, cols=2).cell(0, 0).text = "in a table"
    document.sections[0].header.paragraphs[0].text = "Header text"
    document.add_paragraph("Skills: Django, GraphQL — ünïcödé 😀")
    for i in range(30):
        q = document.add_paragraph()
        for word in f"word{i} another formatted word".split():
            r = q.add_run(word + " ")
            r.bold, r.font.name = i % 2 == 0, "Arial"
    saved = io.BytesIO()
    document.save(saved)
    extra = (
        b'<w:p><w:hyperlink r:id="rId99"><w:r><w:t>link</w:t></w:r></w:hyperlink><w:r><w:t>a</w:t><w:noBreakHyphen/>'
        b'<w:t>b</w:t><w:cr/><w:ptab/><w:t> </w:t><w:t xml:space="preserve"> s </w:t></w:r>'
        b"<w:ins><w:r><w:t>inserted</w:t></w:r></w:ins></w:p>"
        b"<w:sdt><w:sdtContent><w:p><w:r><w:t>in a control</w:t></w:r></w:p></w:sdtContent></w:sdt>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "word/document.xml":
                data = data.replace(b"<w:body>", b"<w:body>" + extra, 1)
            z.writestr(info, data)
    return out.getvalue()


def test_a_docx_reads_the_same_text_as_python_docx_did() -> None:
    data = formatted_docx()
    before = "\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs).strip()
    text = extract_text(data, ".docx", 2_000_000)
    assert text == before
    assert "Plain bold italic\tafter a tab\nafter a line break" in text and "linka-b\n\t  s " in text
    assert "in a table" not in text and "Header text" not in text and "inserted" not in text


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"word/document.xml": "<x/>"}, "no _rels/.rels"),
        ({"_rels/.rels": "<Relationships/>"}, "names no main document part"),
        ({"_rels/.rels": "not xml"}, "cannot read the docx file: XMLSyntaxError"),
    ],
)
def test_a_zip_that_is_no_word_document_is_unreadable_naming_why(members: dict[str, str], says: str) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    with pytest.raises(UnreadableDocument, match=says):
        extract_text(out.getvalue(), ".docx", 1000)


W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
OFFICE_DOCUMENT = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"


def relationships(*targets: str, kind: str = OFFICE_DOCUMENT) -> str:
    rels = "".join(f'<Relationship Id="rId{i}" Type="{kind}" Target="{t}"/>' for i, t in enumerate(targets, 1))
    return f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>'


def package(body: str, *, rels: str | None = None, tail: str = "", **parts: str) -> bytes:
    """A deflated docx whose main part word/document.xml has `body` in its w:body and `tail` after the root;
    `parts` are further members (their names with "__" for "/")."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_rels/.rels", rels if rels is not None else relationships("word/document.xml"))
        z.writestr("word/document.xml", f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>{tail}')
        for name, content in parts.items():
            z.writestr(name.replace("__", "/"), content)
    return out.getvalue()


# the process's own peak RSS (VmHWM, reset at exec: getrusage's ru_maxrss keeps the forking parent's peak)
PEAK_RSS_GROWTH = """
import re, sys
from pathlib import Path
from server.documents import extract_text
def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
data = Path(sys.argv[1]).read_bytes()
before = peak_kb()
text = extract_text(data, ".docx", 2_000_000)
print(text, (peak_kb() - before) // 1024)
"""


@pytest.mark.parametrize("filler", ["<!---->", "<?a?>"], ids=["comments", "processing-instructions"])
def test_comments_and_processing_instructions_are_dropped_as_they_are_parsed(filler: str, tmp_path: Path) -> None:
    """Neither is an element, so no end event counted or cleared them: 5.57 million `<!---->` after one paragraph (a
    57 kB upload under the unpacked-size cap) grew the process by 819 MB and answered "hi". Now the parser drops
    them: a million in the body and a million after the root leave the process's peak memory where it was (the
    docx is made here, so that the reading process's peak before the call is only its imports)."""
    (tmp_path / "bomb.docx").write_bytes(
        package("<w:p><w:r><w:t>hi</w:t></w:r></w:p>" + filler * 1_000_000, tail=filler * 1_000_000)
    )
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_GROWTH, str(tmp_path / "bomb.docx")],
        capture_output=True, text=True, timeout=120, check=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    text, grown_mb = done.stdout.split()
    assert text == "hi"
    assert int(grown_mb) < 40, f"reading grew the peak RSS by {grown_mb} MB"


def test_the_main_part_is_the_first_office_document_relationship_normalised() -> None:
    """A target of `./word/document.xml` or with %xx escapes named a part the package holds and was refused; the
    loop went on past a first relationship to a missing part (listing every member each time: 7,857 of them to
    "nope" in a 1 MB _rels/.rels over 21,000 members held 6.8 s of CPU before its 422). Now the first officeDocument
    relationship is the main part, its name resolved like a URI's path."""
    text = "<w:p><w:r><w:t>main</w:t></w:r></w:p>"
    for target in ["./word/document.xml", "/word/document.xml", "word/./x/../document%2Exml"]:
        assert extract_text(package(text, rels=relationships(target)), ".docx", 100) == "main", target
    with pytest.raises(UnreadableDocument, match="main document part 'nope' is missing"):
        extract_text(package(text, rels=relationships("nope", "word/document.xml")), ".docx", 100)


def test_thousands_of_relationships_over_thousands_of_members_are_refused_at_the_first() -> None:
    """The review's 1.73 MB upload, near enough: 21,000 empty members and 7,500 officeDocument relationships to
    "nope" (CPU time, not wall time: 6.8 s before, well under a second now)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_rels/.rels", relationships(*["nope"] * 7_500))
        for i in range(21_000):
            z.writestr(f"m{i}", "")
    data = out.getvalue()
    started = time.process_time()
    with pytest.raises(UnreadableDocument, match="'nope' is missing"):
        extract_text(data, ".docx", 2_000_000)
    assert time.process_time() - started < 2
