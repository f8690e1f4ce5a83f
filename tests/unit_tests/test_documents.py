"""server/documents.py: the text of each document type; a docx read streamed, every paragraph once, within limits."""

from __future__ import annotations

import io
import posixpath
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import docx
import pytest
from docx.enum.text import WD_BREAK
from docx.shared import Pt

from server import documents
from server.documents import (
    DocumentReadersBusy,
    DocumentTooLarge,
    UnreadableDocument,
    extract_text,
    parse_in_background,
)


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


def test_a_formatted_docx_reads_every_paragraph_in_order_headers_first() -> None:
    """The reader copied python-docx's `Document.paragraphs`: the table, the header, the insertion and the content
    control were lost. Now every paragraph of the body is read in document order (a table row a line), with the
    run elements python-docx read as it read them, the header before the body."""
    words = [
        " ".join(f"word{i} another formatted word".split()) + " " for i in range(30)
    ]  # each word its own run, a space after each
    expected = [
        "Header text",
        "linka-b\n\t  s inserted",
        "in a control",
        "Alex Kim",
        "Plain bold italic\tafter a tab\nafter a line break",
        "  leading and trailing spaces  ",
        "",
        "in a table",
        "",
        "Skills: Django, GraphQL — ünïcödé 😀",
        *words,
    ]
    assert extract_text(formatted_docx(), ".docx", 2_000_000) == "\n".join(expected).strip()


def resume_template() -> bytes:
    """A resume as Word's templates lay it out: a header with the name, then a table of labels and values."""
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "Alex Kim, alex@example.com"
    table = document.add_table(rows=3, cols=2)
    for row, (label, value) in enumerate(
        [("Name", "Alex Kim"), ("Experience", "Backend developer at Acme, 2019-2025"), ("Skills", "Django, GraphQL")]
    ):
        table.cell(row, 0).text, table.cell(row, 1).text = label, value
    table.cell(1, 1).add_paragraph("Led the move to Kubernetes")
    saved = io.BytesIO()
    document.save(saved)
    return saved.getvalue()


def test_a_resume_laid_out_in_a_table_under_a_header_is_read() -> None:
    """Such a resume answered 422 "the document has no text (a scanned PDF needs OCR first)": python-docx's
    paragraphs hold neither tables nor headers. A row is a line, its cells joined by " | ", a cell's paragraphs
    each a line."""
    assert extract_text(resume_template(), ".docx", 2_000_000) == (
        "Alex Kim, alex@example.com\n"
        "Name | Alex Kim\n"
        "Experience | Backend developer at Acme, 2019-2025\nLed the move to Kubernetes\n"
        "Skills | Django, GraphQL"
    )


def run(text: str) -> str:
    return f"<w:r><w:t>{text}</w:t></w:r>"


def para(*content: str) -> str:
    return f"<w:p>{''.join(content)}</w:p>"


def cell(*content: str, props: str = "") -> str:
    return f"<w:tc>{props}{''.join(content)}</w:tc>"


def table(*rows: str) -> str:
    return f"<w:tbl><w:tblPr/><w:tblGrid/>{''.join(f'<w:tr>{r}</w:tr>' for r in rows)}</w:tbl>"


TEXT_BOX = (  # a text box as Word writes it: the drawing (mc:Choice), then a VML copy of it (mc:Fallback)
    '<w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wp:anchor><a:graphic><a:graphicData>'
    "<wps:wsp><wps:txbx><w:txbxContent>{box}</w:txbxContent></wps:txbx></wps:wsp></a:graphicData></a:graphic>"
    "</wp:anchor></w:drawing></mc:Choice><mc:Fallback><w:pict><v:shape><v:textbox><w:txbxContent>{box}"
    "</w:txbxContent></v:textbox></v:shape></w:pict></mc:Fallback></mc:AlternateContent></w:r>"
)


def alternatives(*choices: str) -> str:
    """A run's mc:AlternateContent with these mc:Choice contents and a fallback."""
    options = "".join(f'<mc:Choice Requires="wps">{c}</mc:Choice>' for c in choices)
    return (
        f"<w:r><mc:AlternateContent>{options}<mc:Fallback>{box('fallback')}</mc:Fallback></mc:AlternateContent></w:r>"
    )


def box(text: str) -> str:
    return f"<w:txbxContent>{para(run(text))}</w:txbxContent>"


SHAPES = {
    "table-cells-row-by-row": (
        table(cell(para(run("a1"))) + cell(para(run("b1"))), cell(para(run("a2"))) + cell(para(run("b2")))),
        "a1 | b1\na2 | b2",
    ),
    "nested-table": (
        table(cell(para(run("outer"))) + cell(table(cell(para(run("in1"))) + cell(para(run("in2")))), para())),
        "outer | in1 | in2\n",
    ),
    "merged-cells-read-once": (
        table(
            cell(para(run("wide")), props='<w:tcPr><w:gridSpan w:val="2"/></w:tcPr>')
            + cell(para(run("tall")), props='<w:tcPr><w:vMerge w:val="restart"/></w:tcPr>'),
            cell(para(run("x"))) + cell(para(run("y"))) + cell(para(), props="<w:tcPr><w:vMerge/></w:tcPr>"),
        ),
        "wide | tall\nx | y",
    ),
    "content-controls": (
        '<w:sdt><w:sdtPr><w:alias w:val="Name"/></w:sdtPr><w:sdtContent>'
        + para(run("block "), "<w:sdt><w:sdtContent>" + run("run-level") + "</w:sdtContent></w:sdt>")
        + "</w:sdtContent></w:sdt>",
        "block run-level",
    ),
    "revisions": (
        para(
            run("kept "),
            "<w:ins>" + run("inserted ") + "</w:ins>",
            "<w:del><w:r><w:delText>deleted </w:delText></w:r></w:del>",
            "<w:moveFrom>" + run("moved away ") + "</w:moveFrom>",
            "<w:moveTo>" + run("moved here") + "</w:moveTo>",
        )
        + "<w:del>"
        + para(run("a deleted paragraph"))
        + "</w:del>",
        "kept inserted moved here",
    ),
    "fields": (
        para('<w:fldSimple w:instr="PAGE">' + run("7") + "</w:fldSimple>", run(" of ")),
        "7 of",
    ),
    "complex-field": (
        para(
            '<w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText>HYPERLINK "x"</w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="separate"/></w:r>'
            + run("shown")
            + '<w:r><w:fldChar w:fldCharType="end"/></w:r>'
        ),
        "shown",
    ),
    "smart-tags-custom-xml-dir-bdo": (
        '<w:customXml w:element="cv">'
        + para(
            '<w:smartTag w:element="place">' + run("Oslo") + "</w:smartTag>",
            '<w:customXml w:element="x">' + run(", ") + "</w:customXml>",
            '<w:dir w:val="rtl">' + run("rtl") + "</w:dir>",
            '<w:bdo w:val="ltr">' + run(" ltr") + "</w:bdo>",
        )
        + "</w:customXml>",
        "Oslo, rtl ltr",
    ),
    "text-box-once": (
        para(run("before "), TEXT_BOX.format(box=para(run("in the box"))), run("after")),
        "in the box\nbefore after",
    ),
    "first-choice-only": (  # alternate content read once: its first mc:Choice, nested ones likewise
        para(
            run("a"),
            alternatives(box("c1") + alternatives(box("n1"), box("n2")), box("c2")),
            alternatives(box("d1"), box("d2")),
            run("b"),
        ),
        "c1\nn1\nd1\nab",
    ),
    "vml-text-box": (
        para(
            "<w:r><w:pict><v:shape><v:textbox><w:txbxContent>"
            + para(run("boxed"))
            + "</w:txbxContent></v:textbox></v:shape></w:pict></w:r>"
        ),
        "boxed\n",
    ),
    "tab-stops-are-no-tabs": (
        para(
            '<w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>',
            run("a"),
            "<w:r><w:tab/></w:r>",
            run("b"),
        ),
        "a\tb",
    ),
}


@pytest.mark.parametrize(("body", "expected"), list(SHAPES.values()), ids=list(SHAPES))
def test_each_shape_of_a_body_reads_its_text_once(body: str, expected: str) -> None:
    assert extract_text(package(body), ".docx", 2_000_000) == expected.strip()


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
NAMESPACES = " ".join(
    f'xmlns:{prefix}="{uri}"'
    for prefix, uri in [
        ("w", W_NS),
        ("mc", "http://schemas.openxmlformats.org/markup-compatibility/2006"),
        ("wps", "http://schemas.microsoft.com/office/word/2010/wordprocessingShape"),
        ("wp", "http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing"),
        ("a", "http://schemas.openxmlformats.org/drawingml/2006/main"),
        ("v", "urn:schemas-microsoft-com:vml"),
    ]
)


def relationships(*targets: str, kind: str = OFFICE_DOCUMENT) -> str:
    rels = "".join(f'<Relationship Id="rId{i}" Type="{kind}" Target="{t}"/>' for i, t in enumerate(targets, 1))
    return f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>'


def package(body: str, *, rels: str | None = None, tail: str = "", parts: dict[str, str] | None = None) -> bytes:
    """A deflated docx whose main part word/document.xml has `body` in its w:body and `tail` after the root, and
    the further members `parts` (name: content)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_rels/.rels", rels if rels is not None else relationships("word/document.xml"))
        z.writestr("word/document.xml", f"<w:document {NAMESPACES}><w:body>{body}</w:body></w:document>{tail}")
        for name, content in (parts or {}).items():
            z.writestr(name, content)
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
    assert time.process_time() - started < 4  # 2.4 s once in a full suite on the busy 2-core machine


HEADER, FOOTER = (
    f"http://schemas.openxmlformats.org/officeDocument/2006/relationships/{t}" for t in ("header", "footer")
)


def with_headers(body: str, *parts: tuple[str, str, str | None]) -> bytes:
    """A docx whose main part has these header and footer parts: (relationship type, target from word/, content or
    None for a part the package does not hold)."""
    rels = "".join(f'<Relationship Id="h{i}" Type="{kind}" Target="{target}"/>' for i, (kind, target, _) in
                   enumerate(parts))  # fmt: skip
    members = {posixpath.normpath(f"word/{target}"): content for _, target, content in parts if content is not None}
    members["word/_rels/document.xml.rels"] = (
        f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>'
    )
    return package(body, parts=members)


def header(kind: str, text: str) -> str:
    root = "hdr" if kind == HEADER else "ftr"
    return f'<w:{root} xmlns:w="{W_NS}">{para(run(text))}</w:{root}>'


def test_headers_come_before_the_body_and_footers_after_each_once() -> None:
    """Headers and footers were not read (a resume's name and contact line often sit in the header). Now each
    header part the main part's relationships name is read before the body, each footer part after it, in the order
    the relationships list them, a part whose text another already had once (a header each section repeats)."""
    data = with_headers(
        para(run("body")),
        (FOOTER, "footer1.xml", header(FOOTER, "page footer")),
        (HEADER, "header2.xml", header(HEADER, "first header")),
        (HEADER, "./header1.xml", header(HEADER, "second header")),
        (HEADER, "header3.xml", header(HEADER, "first header")),
        (HEADER, "header2.xml", header(HEADER, "first header")),
        (HEADER, "missing.xml", None),
        (HEADER, "document.xml", None),  # the main part as its own header: not read twice
    )
    assert extract_text(data, ".docx", 1000) == "first header\nsecond header\nbody\npage footer"


def test_the_limits_count_the_headers_and_footers_too() -> None:
    """The element and character budgets are one for the whole document, whichever part spends them: no part alone
    passes either (300 empty paragraphs in the body and 300 in a header, 500 elements allowed; 600 characters in
    the body and 600 spaces in a header, which add nothing to the text returned, 1000 characters allowed)."""
    empty = "<w:p/>" * 300
    with pytest.raises(DocumentTooLarge, match="more than 500 XML elements"):
        extract_text(
            with_headers(empty, (HEADER, "header1.xml", f'<w:hdr xmlns:w="{W_NS}">{empty}</w:hdr>')), ".docx", 1000
        )
    blank = header(HEADER, " " * 600)
    with pytest.raises(DocumentTooLarge, match="longer than 1000 characters"):
        extract_text(with_headers(para(run("y" * 600)), (HEADER, "header1.xml", blank)), ".docx", 1000)


def test_an_unreadable_header_or_footer_part_is_skipped_not_the_whole_docx() -> None:
    """A header or footer relationship to an empty, cut or binary member (an image, say) made the whole upload 422
    XMLSyntaxError, the body's text lost. Now such a part is skipped; what it read before it failed still counts
    against the budgets, and a main part that cannot be read is still a 422."""
    cut = f'<w:hdr xmlns:w="{W_NS}">{para(run("cut"))}<w:p>'
    data = with_headers(
        para(run("body")),
        (HEADER, "media/x.png", "\x89PNG\r\n\x1a\n\x00\x00binary"),
        (HEADER, "header1.xml", ""),
        (HEADER, "header2.xml", cut),
        (FOOTER, "footer1.xml", header(FOOTER, "page footer")),
    )
    assert extract_text(data, ".docx", 1000) == "body\npage footer"
    spent = f'<w:hdr xmlns:w="{W_NS}">{"<w:p/>" * 300}<w:p>'  # 301 elements read, then cut off
    with pytest.raises(DocumentTooLarge, match="more than 500 XML elements"):
        extract_text(with_headers("<w:p/>" * 300, (HEADER, "header1.xml", spent)), ".docx", 1000)
    with pytest.raises(UnreadableDocument, match="cannot read the docx file: XMLSyntaxError"):
        extract_text(package(para(run("body")) + "<w:p>"), ".docx", 1000)


def test_a_part_name_in_a_message_is_quoted_and_cut_short() -> None:
    """Zip member and target names went into messages as they were: up to 64 KB, with line breaks and bidi
    controls. Now each is shown quoted and escaped, cut to its first 80 characters."""
    name = "word/doc\u202e\n" + "x" * 5000 + ".xml"
    shown = repr(name[:80]) + "..."
    rels_name = f"word/_rels/{posixpath.basename(name)}.rels"
    cases = [
        (
            {name: f"<w:document {NAMESPACES}><w:body>{'<w:p/>' * 600}</w:body></w:document>"},
            DocumentTooLarge,
            f"reading {shown})",
        ),
        ({}, UnreadableDocument, f"main document part {shown} is missing"),
        ({name: "<w:p/>", rels_name: " " * 1_000_001}, DocumentTooLarge, f"its {rels_name[:80]!r}..."),
    ]
    for (members, error, says), limit in zip(cases, [1000, 1000, 100_000], strict=True):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("_rels/.rels", relationships(name.replace("\n", "%0A")))
            for member, content in members.items():
                z.writestr(member, content)
        with pytest.raises(error) as refused:
            extract_text(out.getvalue(), ".docx", limit)
        assert says in str(refused.value) and "\n" not in str(refused.value) and len(str(refused.value)) < 300


def test_a_docx_without_text_is_not_blamed_on_a_missing_ocr() -> None:
    with pytest.raises(UnreadableDocument) as refused:
        extract_text(package(para()), ".docx", 1000)
    assert str(refused.value) == "the document has no text"


def test_python_docx_is_only_a_development_dependency(tmp_path: Path) -> None:
    """python-docx stayed a runtime dependency after the server stopped reading with it: it is the tests' and the
    benchmark's now (they build docx files with it), and the server reads a docx without importing it."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("python-docx")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("python-docx")]
    (tmp_path / "cv.docx").write_bytes(resume_template())
    server = (
        "import sys, pathlib, server.app\nfrom server.documents import extract_text\n"
        "text = extract_text(pathlib.Path(sys.argv[1]).read_bytes(), '.docx', 2_000_000)\n"
        "print(text.count('|'), 'docx' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", server, str(tmp_path / "cv.docx")],
        capture_output=True, text=True, timeout=120, check=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.stdout.split() == ["3", "False"]


def test_one_tenant_holds_at_most_two_of_the_four_document_places() -> None:
    """The four places (two parsing, two waiting) were every tenant's: one caller sending slow documents kept all
    the others at 503. Now a tenant's own uploads hold two at most; the third is refused naming them, another tenant
    still gets the other two, and past four the server's own limit answers. The places come back as parses end."""
    release = threading.Event()

    def held(data: bytes, kind: str, max_chars: int) -> str:
        release.wait(20)
        return "read"

    futures = []
    try:
        futures += [parse_in_background(held, b"", ".pdf", 1, "slow") for _ in range(2)]
        with pytest.raises(DocumentReadersBusy, match="your own uploads: 2 pdf or docx files of this tenant"):
            parse_in_background(held, b"", ".pdf", 1, "slow")
        futures += [parse_in_background(held, b"", ".pdf", 1, "other") for _ in range(2)]
        with pytest.raises(DocumentReadersBusy, match="the server is parsing 2 documents and 2 more wait"):
            parse_in_background(held, b"", ".pdf", 1, "third")
    finally:
        release.set()
    assert [f.result(timeout=20) for f in futures] == ["read"] * 4
    deadline = time.monotonic() + 10
    while True:  # each place is given back by a callback run just after its result is set
        try:
            again = [parse_in_background(held, b"", ".pdf", 1, "slow") for _ in range(2)]
            break
        except DocumentReadersBusy:
            assert time.monotonic() < deadline, "the places did not come back"
            time.sleep(0.01)
    assert [f.result(timeout=20) for f in again] == ["read"] * 2


def test_a_tenant_alone_parses_on_both_workers_but_another_tenant_goes_first() -> None:
    """A tenant parsed one upload at a time, so with one API key behind a whole front end a slow PDF held every user's
    upload while the other worker stayed idle. Now a tenant takes an idle worker while no other tenant's upload waits,
    but cannot keep both: another tenant's waiting upload takes the next free worker before its further one, though
    that came first. One cancelled while it waits never runs, and its place is given back at once."""
    release = {name: threading.Event() for name in ("a1", "a2", "a3", "a4", "b1", "c1")}
    started: list[str] = []

    def held(data: bytes, kind: str, max_chars: int) -> str:
        started.append(data.decode())
        release[data.decode()].wait(20)
        return data.decode()

    def wait_for(names: list[str]) -> None:
        deadline = time.monotonic() + 10
        while started != names:
            assert time.monotonic() < deadline, started
            time.sleep(0.01)
        time.sleep(0.2)
        assert started == names  # and nothing more started

    try:
        a1, a2 = (parse_in_background(held, name, ".pdf", 1, "a") for name in (b"a1", b"a2"))
        wait_for(["a1", "a2"])  # no one else waits: both workers
        b1 = parse_in_background(held, b"b1", ".pdf", 1, "b")
        release["a1"].set()
        wait_for(["a1", "a2", "b1"])
        a3 = parse_in_background(held, b"a3", ".pdf", 1, "a")  # both workers busy (a2, b1): it waits
        c1 = parse_in_background(held, b"c1", ".pdf", 1, "c")  # and so does this one, sent after it
        release["b1"].set()
        wait_for(["a1", "a2", "b1", "c1"])  # a parses a2 already: c's upload takes the free worker
        assert a3.cancel()
        a4 = parse_in_background(held, b"a4", ".pdf", 1, "a")  # a3's place came back
        release["a2"].set()
        wait_for(["a1", "a2", "b1", "c1", "a4"])
    finally:
        for event in release.values():
            event.set()
    assert [f.result(timeout=20) for f in (a1, a2, b1, c1, a4)] == ["a1", "a2", "b1", "c1", "a4"]


class _PinnedLock:
    """documents._LOCK itself, with one interleaving pinned: `first`'s thread holds it (and lets it go) before
    `second`'s thread takes it."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.first, self.second = lock, 0, 0
        self.first_done = threading.Event()

    def __enter__(self) -> None:
        if threading.get_ident() == self.second:
            assert self.first_done.wait(20)
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if threading.get_ident() == self.first:
            self.first_done.set()


def test_an_upload_cancelled_as_a_parse_ends_leaves_no_worker_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tenant a parses a1, b parses b1; a2, then c1, wait. c1's request goes away just as b1 ends: c1 is marked
    cancelled, and before its callback takes the lock, b1's worker looks for the next upload. It skipped a2 for c1
    (another tenant's upload waiting), then dropped c1 and stopped; c1's callback started nothing either: a2 waited
    with a worker idle, up to the read time limit. Now a2 takes that worker."""
    release = {name: threading.Event() for name in ("a1", "a2", "b1")}
    started: list[str] = []
    lock = _PinnedLock(documents._LOCK)

    def held(data: bytes, kind: str, max_chars: int) -> str:
        started.append(data.decode())
        if data == b"b1":
            lock.first = threading.get_ident()  # b1's worker, once b1 is read, looks for the next upload first
        release[data.decode()].wait(20)
        return data.decode()

    futures = []
    try:
        futures += [parse_in_background(held, b"a1", ".pdf", 1, "a")]
        futures += [parse_in_background(held, b"b1", ".pdf", 1, "b")]
        futures += [parse_in_background(held, name, ".pdf", 1, tenant) for name, tenant in ((b"a2", "a"), (b"c1", "c"))]
        deadline = time.monotonic() + 10
        while sorted(started) != ["a1", "b1"]:
            assert time.monotonic() < deadline, started
            time.sleep(0.01)
        monkeypatch.setattr(documents, "_LOCK", lock)

        def cancel_c1() -> None:
            lock.second = threading.get_ident()
            futures[3].cancel()  # marks c1 cancelled, then its callback waits for the lock

        canceller = threading.Thread(target=cancel_c1)
        canceller.start()
        while not futures[3].cancelled():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        release["b1"].set()
        canceller.join(20)
        assert not canceller.is_alive()
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started[2:] == ["a2"], "a2 was not started on b1's worker"
    finally:
        for event in release.values():
            event.set()
    assert [f.result(timeout=20) for f in futures[:3]] == ["a1", "b1", "a2"]
