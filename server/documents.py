"""Text from an uploaded resume or job description: txt, md, pdf (pypdf), docx (python-docx)."""

from __future__ import annotations

import io
from pathlib import PurePath


class UnsupportedDocument(ValueError):
    """Not a type we read (415)."""


class UnreadableDocument(ValueError):
    """A supported type whose content cannot be read (422)."""


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


def extract_text(data: bytes, kind: str) -> str:
    """The document's text; raises UnreadableDocument when there is none to be had."""
    try:
        if kind in (".txt", ".md"):
            text = data.decode("utf-8-sig")
        elif kind == ".pdf":
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(data))
            text = "\n".join(page.extract_text() or "" for page in reader.pages)
        elif kind == ".docx":
            import docx

            document = docx.Document(io.BytesIO(data))
            text = "\n".join(p.text for p in document.paragraphs)
        else:
            raise UnsupportedDocument(f"unsupported document type {kind!r}")
    except UnicodeDecodeError:
        raise UnreadableDocument("the file is not UTF-8 text") from None
    except UnsupportedDocument:
        raise
    except Exception as exc:  # pypdf / python-docx raise many types for corrupt files
        raise UnreadableDocument(f"cannot read the {kind[1:]} file: {type(exc).__name__}") from None
    text = text.replace("\x00", "").strip()
    if not text:
        raise UnreadableDocument("the document has no text (a scanned PDF needs OCR first)")
    return text
