"""server/documents.py reads a docx by streaming its main part: the text must be what python-docx read before."""

from __future__ import annotations

import io
import zipfile

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
