"""Text from an uploaded resume or job description: txt, md, pdf (pypdf), docx (python-docx)."""

from __future__ import annotations

import io
from pathlib import PurePath


class UnsupportedDocument(ValueError):
    """Not a type we read (415)."""


class UnreadableDocument(ValueError):
    """A supported type whose content cannot be read (422)."""


class DocumentTooLarge(ValueError):
    """A document that unpacks to more than the server reads, or holds more text than a text upload may (413)."""


# a docx is a zip: its parts may unpack to this many times the upload limit at most. Word's XML around plain text
# is a few times the text; beyond this factor a file is a decompression bomb (a 50 kB file unpacked to 20 MB of
# XML held the event loop 4 s and the process's memory grew with it), refused before any part is unpacked
DOCX_UNPACKED_FACTOR = 20


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
    DOCX_UNPACKED_FACTOR times that. CPU-bound: call it in a worker thread."""
    try:
        if kind in (".txt", ".md"):
            text = data.decode("utf-8-sig")
        elif kind == ".pdf":
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(data))
            pages: list[str] = []
            for page in reader.pages:  # stops at the page that passes the limit, not after the last one
                pages.append(page.extract_text() or "")
                _check_length(sum(map(len, pages)), max_chars)
            text = "\n".join(pages)
        elif kind == ".docx":
            import docx

            _check_unpacked_size(data, max_chars * DOCX_UNPACKED_FACTOR)
            document = docx.Document(io.BytesIO(data))
            text = "\n".join(p.text for p in document.paragraphs)
        else:
            raise UnsupportedDocument(f"unsupported document type {kind!r}")
    except UnicodeDecodeError:
        raise UnreadableDocument("the file is not UTF-8 text") from None
    except (UnsupportedDocument, DocumentTooLarge):
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


def _check_unpacked_size(data: bytes, limit: int) -> None:
    """Refuse a zip whose parts declare more than `limit` bytes unpacked. The declared sizes bound what zipfile
    unpacks (it stops at a part's declared size and fails its CRC check), so a part cannot lie its way past this."""
    import zipfile

    try:
        unpacked = sum(info.file_size for info in zipfile.ZipFile(io.BytesIO(data)).infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnreadableDocument(f"cannot read the docx file: {type(exc).__name__}") from None
    if unpacked > limit:
        raise DocumentTooLarge(f"unpacks to {unpacked} bytes, more than the {limit} byte limit for a docx")
