"""Text from an uploaded resume or job description: txt, md, pdf (pypdf), docx (its main part streamed with lxml)."""

from __future__ import annotations

import io
import posixpath
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePath
from typing import Any
from urllib.parse import unquote


class UnsupportedDocument(ValueError):
    """Not a type we read (415)."""


class UnreadableDocument(ValueError):
    """A supported type whose content cannot be read (422)."""


class DocumentTooLarge(ValueError):
    """A document that unpacks to more than the server reads, or holds more text than a text upload may (413)."""


# a docx is a zip: the declared unpacked size of all its parts (XML and media alike) may be this many times the
# upload limit at most, refused before any part is unpacked. It bounds the bytes unpacked, not the text: Word's XML
# with per-word run formatting is about 27 bytes per character of text, so a heavily formatted document near the
# character limit can meet this cap first
DOCX_UNPACKED_FACTOR = 20
# the XML elements read from the main document part, per character of the limit (1 million at the default 2 MB): the
# reading streams, so memory stays flat, but each element costs about 3 us of CPU, so a part of millions of empty
# paragraphs (a 6.6 kB docx held 24 s of CPU and 227 MB in python-docx) stops here. Word's XML with per-word
# formatting is about one element per 25 bytes, so the unpacked-size cap above already allows little more than this
DOCX_ELEMENTS_PER_CHAR = 0.5
# documents are parsed by this many threads per process, apart from the default executor that storage calls use:
# further uploads wait their turn, so parsing never takes the threads other requests' index and audit writes need
PARSE_WORKERS = 2
DOCUMENT_READERS = ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="teamgraph-document")

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DOCUMENT, _BODY, _P, _R, _HYPERLINK, _BR = (f"{_W}{t}" for t in ("document", "body", "p", "r", "hyperlink", "br"))
# a run's text elements and what each reads as (python-docx's Run.text; a w:br reads "\n" unless a page/column break)
_RUN_TEXT = {f"{_W}{t}": s for t, s in [("t", ""), ("tab", "\t"), ("ptab", "\t"), ("cr", "\n"),
                                        ("noBreakHyphen", "-"), ("br", "\n")]}  # fmt: skip
_OFFICE_DOCUMENT = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"


TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}


def document_kind(filename: str | None, content_type: str | None) -> str:
    """The file's extension (.txt, .md, .pdf, .docx) from its name, else from its content type."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in TYPES:
        return suffix
    for ext, mime in TYPES.items():
        if (content_type or "").split(";")[0].strip().lower() == mime:
            return ext
    raise UnsupportedDocument(
        f"unsupported document type {suffix or content_type or 'unknown'!r}; send .txt, .md, .pdf or .docx"
    )


def extract_text(data: bytes, kind: str, max_chars: int) -> str:
    """The document's text; raises UnreadableDocument when there is none to be had, DocumentTooLarge when it has
    more than `max_chars` characters (what a text upload of the byte limit can hold) or a docx unpacks to more than
    DOCX_UNPACKED_FACTOR times that. CPU-bound: call it in DOCUMENT_READERS."""
    try:
        if kind in (".txt", ".md"):
            text = data.decode("utf-8-sig")
        elif kind == ".pdf":
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(data))
            pages: list[str] = []
            read = 0
            for page in reader.pages:  # stops at the page that passes the limit, not after the last one
                pages.append(page.extract_text() or "")
                read += len(pages[-1])
                _check_length(read, max_chars)
            text = "\n".join(pages)
        elif kind == ".docx":
            text = _docx_text(data, max_chars)
        else:
            raise UnsupportedDocument(f"unsupported document type {kind!r}")
    except UnicodeDecodeError:
        raise UnreadableDocument("the file is not UTF-8 text") from None
    except (UnsupportedDocument, UnreadableDocument, DocumentTooLarge):
        raise
    except Exception as exc:  # pypdf / python-docx raise many types for corrupt files
        raise UnreadableDocument(f"cannot read the {kind[1:]} file: {type(exc).__name__}") from None
    # pypdf hands back a ToUnicode entry's UTF-16 as it is: a surrogate pair makes its character, a lone surrogate
    # (which no store or hash can encode) becomes U+FFFD, and a NUL (which PostgreSQL text refuses) is dropped
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.replace("\x00", "").strip()
    if not text:
        raise UnreadableDocument("the document has no text (a scanned PDF needs OCR first)")
    _check_length(len(text), max_chars)
    return text


def _check_length(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise DocumentTooLarge(f"its text is longer than {max_chars} characters (TEAMGRAPH_MAX_UPLOAD_BYTES)")


def _docx_text(data: bytes, max_chars: int) -> str:
    """The text python-docx's `Document.paragraphs` reads (the body's own paragraphs, one a line; tables, headers and
    revision marks are not read), streamed from the main document part: memory stays flat, and the reading stops
    once the text passes `max_chars` characters or the part passes DOCX_ELEMENTS_PER_CHAR elements per character."""
    from lxml import etree

    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        parts = package.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnreadableDocument(f"cannot read the docx file: {type(exc).__name__}") from None
    unpacked, limit = sum(info.file_size for info in parts), max_chars * DOCX_UNPACKED_FACTOR
    if unpacked > limit:  # zipfile stops at a part's declared size (and fails its CRC): a part cannot lie past it
        raise DocumentTooLarge(f"unpacks to {unpacked} bytes, more than the {limit} byte limit for a docx")
    main = _main_part(package)
    max_elements, elements, read = int(max_chars * DOCX_ELEMENTS_PER_CHAR), 0, 0
    paragraphs: list[str] = []
    runs: list[str] = []
    body: Any = None  # the document's w:body, once met (lxml keeps one proxy per element while it is referenced)

    def in_body(element: Any) -> bool:
        nonlocal body
        if body is None and _is_body(element):
            body = element
        return body is not None and element is body

    with package.open(main) as xml:
        # comments and processing instructions are dropped as they are parsed: no end event would count or clear
        # them, so millions of `<!---->` (7 bytes each, deflated to nothing) grew the tree past 800 MB
        parse = etree.iterparse(
            xml, events=("end",), remove_blank_text=True, remove_comments=True, remove_pis=True,
            resolve_entities=False, no_network=True,
        )  # fmt: skip
        for _, element in parse:
            elements += 1
            if elements > max_elements:
                raise DocumentTooLarge(f"its {main} has more than {max_elements} XML elements")
            tag = element.tag
            if tag in _RUN_TEXT:
                run = element.getparent()
                if run is not None and run.tag == _R and (p := run.getparent()) is not None:
                    if p.tag == _HYPERLINK:
                        p = p.getparent()
                    if p is not None and p.tag == _P and in_body(p.getparent()):
                        if tag == _BR:
                            runs.append("\n" if element.get(f"{_W}type", "textWrapping") == "textWrapping" else "")
                        else:
                            runs.append(_RUN_TEXT[tag] or element.text or "")
                        read += len(runs[-1])
                        _check_length(read, max_chars)
            elif tag == _P and in_body(element.getparent()):
                paragraphs.append("".join(runs))
                runs.clear()
            element.clear()  # read: drop it and what came before it, so the tree never grows past one path
            if element.getprevious() is not None:
                parent = element.getparent()
                while element.getprevious() is not None:
                    del parent[0]
    return "\n".join(paragraphs)


def _main_part(package: zipfile.ZipFile) -> str:
    """The main document part's name, from the package's relationships (usually word/document.xml)."""
    from lxml import etree

    try:
        rels = package.getinfo("_rels/.rels")
    except KeyError:
        raise UnreadableDocument("not a Word document: it has no _rels/.rels") from None
    if rels.file_size > 1_000_000:
        raise DocumentTooLarge(f"its _rels/.rels unpacks to {rels.file_size} bytes")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)
    root = etree.fromstring(package.read(rels), parser)
    # the first officeDocument relationship names the main part (a package has one), looked up by name once: a 1 MB
    # _rels/.rels holds thousands of relationships, and each listing every one of a zip's thousands of members
    # held 7 s of CPU
    for rel in root:
        if rel.get("Type") == _OFFICE_DOCUMENT and rel.get("TargetMode") != "External":
            target = _part_name("", rel.get("Target") or "")
            if target not in set(package.namelist()):
                raise UnreadableDocument(f"not a Word document: its main document part {target!r} is missing")
            return target
    raise UnreadableDocument("not a Word document: it names no main document part")


def _part_name(base: str, target: str) -> str:
    """The zip member a relationship's target names: relative to `base` (the source part's folder) unless it starts
    with "/", %xx escapes decoded, "." and ".." steps resolved (`./word/document.xml` is `word/document.xml`)."""
    path = unquote(target)
    path = path.lstrip("/") if path.startswith("/") else posixpath.join(base, path)
    return posixpath.normpath(path).lstrip("/") if path else ""


def _is_body(element: Any) -> bool:
    """Whether this is the w:body under the root w:document (the body python-docx reads)."""
    return (
        element is not None
        and element.tag == _BODY
        and (root := element.getparent()) is not None
        and root.tag == _DOCUMENT
        and root.getparent() is None
    )
