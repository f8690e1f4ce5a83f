"""Text from an uploaded resume or job description: txt, md, pdf (pypdf), docx (body, headers, footers via lxml)."""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import multiprocessing.connection
import os
import posixpath
import resource
import select
import signal
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePath
from urllib.parse import unquote


class UnsupportedDocument(ValueError):
    """Not a type we read (415)."""


class UnreadableDocument(ValueError):
    """A supported type whose content cannot be read (422)."""


class DocumentTooLarge(ValueError):
    """A document that unpacks to more than the server reads, or holds more text than a text upload may (413)."""


class DocumentReadersBusy(RuntimeError):
    """Every document worker is parsing and PARSE_QUEUE uploads wait already, or the tenant's own uploads hold
    PARSE_PER_TENANT of those places (503, retry in a few seconds)."""


class DocumentReadersUnavailable(RuntimeError):
    """No reader process could be started (fork refused: EAGAIN, ENOMEM; the forkserver could not be spawned), or
    one was ended from outside before it answered (SIGKILL, SIGTERM or SIGHUP: the OOM killer, a service manager; a
    forkserver killed alone costs no reading: its readers' answers are still waited for): the machine's fault, not
    the document's (503, retry in a few seconds). A reader that crashes (SIGSEGV, SIGABRT...) is the document's: 422."""


class DocumentReadTimeout(UnreadableDocument):
    """A pdf or docx whose reading took longer than its time limit: its reader process was killed (422)."""


# a docx is a zip: the declared unpacked size of all its parts (XML and media alike) may be this many times the
# upload limit at most, refused before any part is unpacked. It bounds the bytes unpacked, not the text: Word's XML
# with per-word run formatting is about 27 bytes per character of text, so a heavily formatted document near the
# character limit can meet this cap first
DOCX_UNPACKED_FACTOR = 20
# the XML elements read from a docx (its main part, headers and footers together), per character of the limit (1
# million at the default 2 MB): the reading streams, so memory stays flat, but each element costs about 1-2 us of
# CPU, so a part of millions of empty paragraphs (a 6.6 kB docx held 24 s of CPU and 227 MB in python-docx) stops
# here. Word's XML with per-word formatting is about one element per 25 bytes, so the unpacked-size cap above
# already allows little more than this
DOCX_ELEMENTS_PER_CHAR = 0.5
# pdf and docx files are parsed by this many workers per process: each a thread of its own, apart from the default
# executor that storage calls use (so parsing never takes the threads other requests' index and audit writes need),
# which runs the parse in a child process (read_document) and waits for it, killing it past its time limit: a
# thread cannot be stopped, and a PDF has no bound on its CPU time but that one
PARSE_WORKERS = 2
DOCUMENT_READERS = ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="teamgraph-document")
# at most this many further uploads wait for one of those workers; the next is refused at once (DocumentReadersBusy,
# 503): the queue was unbounded, each waiting upload holding its body, and txt files waited behind pdf bombs
PARSE_QUEUE = 2
# of those PARSE_WORKERS + PARSE_QUEUE places, one tenant's uploads hold at most this many: a tenant sending slow
# documents one after another is refused itself (503) instead of keeping every other tenant's uploads at 503
PARSE_PER_TENANT = 2
# and of the PARSE_WORKERS workers one tenant's uploads take more than this many only while no other tenant's upload
# waits: a tenant alone (one API key behind a whole front end) parses on every worker, but once another tenant's
# upload waits, it takes the next free worker before that tenant's further one. With two slow documents a tenant held
# both workers and every other tenant's upload waited for them; with one at most, a lone tenant left a worker idle
PARSE_RUNNING_PER_TENANT = 1
# a reader process may map this much memory over what it maps when it starts (RLIMIT_AS; the interpreter and the
# modules the forkserver imported: 64 MB under `teamgraph serve`, 260 MB from a script importing the app): past it
# the reading fails (413). A PDF of 2 million characters (the most the default text limit lets through) took 290 MB;
# a resume, a few MB (docs/performance.md, section 9)
READER_MEMORY_BYTES = 1024 * 1024 * 1024
# decoded where they arrive (2 MB of UTF-8 in milliseconds), never queued behind the parsing of other uploads
PLAIN_TEXT = (".txt", ".md")


@dataclass(eq=False)
class _Parse:
    tenant: str
    future: Future[str]
    read: Callable[[], str]


_LOCK = threading.RLock()  # guards the three below; reentrant: a future's callbacks may run under it
_PLACES: dict[str, int] = {}  # tenant: its uploads parsing or waiting; absent at 0
_RUNNING: dict[str, int] = {}  # tenant: its uploads parsing; absent at 0
_WAITING: deque[_Parse] = deque()  # uploads admitted but not yet parsing, oldest first

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DOCUMENT, _BODY, _HDR, _FTR = (f"{_W}{t}" for t in ("document", "body", "hdr", "ftr"))
_P, _R, _T, _BR, _TR, _TC = (f"{_W}{t}" for t in ("p", "r", "t", "br", "tr", "tc"))
_BR_TYPE = f"{_W}type"
_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
_ALTERNATE_CONTENT, _CHOICE = f"{_MC}AlternateContent", f"{_MC}Choice"
# subtrees whose text is not the document's: deleted and moved-away revisions, and alternate content's fallback
# (a text box's VML copy for older readers, which would read its text twice; the first mc:Choice before it is read,
# any further mc:Choice skipped likewise)
_SKIPPED = {f"{_W}del", f"{_W}moveFrom", f"{_MC}Fallback"}
# a run's text elements and what each reads as (python-docx's Run.text; a w:br reads "\n" unless a page/column break)
_RUN_TEXT = {f"{_W}{t}": s for t, s in [("t", ""), ("tab", "\t"), ("ptab", "\t"), ("cr", "\n"),
                                        ("noBreakHyphen", "-"), ("br", "\n")]}  # fmt: skip
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_RELATIONSHIPS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
_OFFICE_DOCUMENT, _HEADER, _FOOTER = (f"{_RELATIONSHIPS}{t}" for t in ("officeDocument", "header", "footer"))


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
    DOCX_UNPACKED_FACTOR times that. CPU-bound for pdf and docx: call it through parse_in_background."""
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
    except (UnsupportedDocument, UnreadableDocument, DocumentTooLarge, MemoryError):
        raise  # a MemoryError is a reader process past its memory limit (read_document): not the file's fault
    except Exception as exc:  # pypdf, zipfile and lxml raise many types for corrupt files
        raise UnreadableDocument(f"cannot read the {kind[1:]} file: {type(exc).__name__}") from None
    # pypdf hands back a ToUnicode entry's UTF-16 as it is: a surrogate pair makes its character, a lone surrogate
    # (which no store or hash can encode) becomes U+FFFD, and a NUL (which PostgreSQL text refuses) is dropped
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.replace("\x00", "").strip()
    if not text:
        raise UnreadableDocument(
            "the document has no text" + (" (a scanned PDF needs OCR first)" if kind == ".pdf" else "")
        )
    _check_length(len(text), max_chars)
    return text


def parse_in_background(
    read: Callable[[bytes, str, int], str], data: bytes, kind: str, max_chars: int, tenant: str
) -> Future[str]:
    """`read(data, kind, max_chars)` run on a DOCUMENT_READERS thread (the route's `read` is read_document, which
    parses in a child process), or DocumentReadersBusy when the tenant's uploads are PARSE_PER_TENANT of those parsed
    or waiting, or when PARSE_WORKERS uploads are parsed and PARSE_QUEUE wait already. An admitted upload parses
    once a worker is free and fewer than PARSE_RUNNING_PER_TENANT of its tenant's own uploads parse or no other
    tenant's upload waits, waiting uploads going in the order they came otherwise. The place is given back when the
    parsing ends or is cancelled before it starts, not when the request that waits for it goes away (its worker
    keeps working, up to the time limit)."""
    with _LOCK:
        if _PLACES.get(tenant, 0) >= PARSE_PER_TENANT:
            raise DocumentReadersBusy(
                f"your own uploads: {PARSE_PER_TENANT} pdf or docx files of this tenant are being parsed or wait "
                "already, as many as one tenant may; send the upload again once one of them is answered"
            )
        if sum(_PLACES.values()) >= PARSE_WORKERS + PARSE_QUEUE:
            raise DocumentReadersBusy(
                f"the server is parsing {PARSE_WORKERS} documents and {PARSE_QUEUE} more wait, as many as it takes "
                "at once; send the upload again in a few seconds"
            )
        _PLACES[tenant] = _PLACES.get(tenant, 0) + 1
        parse = _Parse(tenant, Future(), partial(read, data, kind, max_chars))
        parse.future.add_done_callback(partial(_give_back_place, parse))
        _WAITING.append(parse)
        _start_waiting()
    return parse.future


def _give_back_place(parse: _Parse, _: object = None) -> None:
    with _LOCK:
        _decrement(_PLACES, parse.tenant)
        if parse.future.cancelled() and parse in _WAITING:  # cancelled before it started: it never will
            _WAITING.remove(parse)
            # a pass run between its cancelling and this (a parse ending) may have left a worker idle for it
            _start_waiting()


def _decrement(counts: dict[str, int], tenant: str) -> None:
    if counts[tenant] > 1:
        counts[tenant] -= 1
    else:
        del counts[tenant]


def _start_waiting() -> None:
    """Start the waiting uploads a free worker may take, oldest first, skipping those whose tenant parses
    PARSE_RUNNING_PER_TENANT already while the upload of another tenant that parses fewer waits. Called under
    _LOCK."""
    started = True
    while started and _WAITING and sum(_RUNNING.values()) < PARSE_WORKERS:
        started = False
        for parse in list(_WAITING):
            if sum(_RUNNING.values()) >= PARSE_WORKERS:
                return
            if _RUNNING.get(parse.tenant, 0) >= PARSE_RUNNING_PER_TENANT and any(
                other.tenant != parse.tenant
                and _RUNNING.get(other.tenant, 0) < PARSE_RUNNING_PER_TENANT
                and not other.future.cancelled()  # cancelled, its _give_back_place not yet run: it never starts
                for other in _WAITING
            ):
                continue  # that other tenant's upload takes this worker first, later in this pass
            _WAITING.remove(parse)
            if not parse.future.set_running_or_notify_cancel():
                # cancelled while it waited (its place is given back by its own callback): the uploads this pass
                # skipped for it are looked at again
                started = True
                continue
            started = True
            _RUNNING[parse.tenant] = _RUNNING.get(parse.tenant, 0) + 1
            try:
                DOCUMENT_READERS.submit(_run, parse)
            except BaseException as exc:  # the executor is shut down: the interpreter is exiting
                _decrement(_RUNNING, parse.tenant)
                parse.future.set_exception(exc)


def _run(parse: _Parse) -> None:
    """On a DOCUMENT_READERS thread: the upload's reading, then its worker handed to the next waiting upload before
    the answer is set (so the place it holds until then never keeps a waiting upload from starting)."""
    result: str | None = None
    error: BaseException | None = None
    try:
        result = parse.read()
    except BaseException as exc:
        error = exc
    with _LOCK:
        _decrement(_RUNNING, parse.tenant)
        _start_waiting()
    if error is not None:
        parse.future.set_exception(error)
    else:
        parse.future.set_result(result)  # type: ignore[arg-type]


_FORKSERVER_LOCK = threading.Lock()
_forkserver_context: multiprocessing.context.ForkServerContext | None = None


def _reader_context() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's forkserver: a process started at the first pdf or docx, with this module, pypdf and lxml
    imported, that forks a reader process per upload in about 20 ms. It leaves when this process does (it watches a
    pipe from it), kill -9 included. A reader started from a script (not `python -m`) runs that script again as
    `__mp_main__`, as multiprocessing does (Python 3.11's forkserver never preloads `__main__` itself, though it is
    asked to): server.cli, all the `teamgraph` script imports, is preloaded so that costs a millisecond."""
    global _forkserver_context
    with _FORKSERVER_LOCK:
        if _forkserver_context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["__main__", __name__, "pypdf", "lxml.etree", "server.cli"])
            _forkserver_context = context
        return _forkserver_context


def read_document(data: bytes, kind: str, max_chars: int, seconds: float) -> str:
    """extract_text in a reader process of its own, killed past `seconds` (DocumentReadTimeout); a reading that
    needs more than READER_MEMORY_BYTES is DocumentTooLarge; its other outcomes raised as extract_text raises them.
    Blocks: call it through parse_in_background."""
    context, memory = _reader_context(), READER_MEMORY_BYTES
    receive, send = context.Pipe(duplex=False)
    reader = context.Process(
        target=_read_in_child,
        args=(send, data, kind, max_chars, math.ceil(seconds) + 1, memory),
        name="teamgraph-document-reader",
        daemon=True,
    )
    started = False
    try:
        try:
            reader.start()
        except (OSError, EOFError) as exc:  # EOFError: the forkserver's fork failed and it exited (Python 3.11)
            raise DocumentReadersUnavailable(f"no document reader can be started: {type(exc).__name__}: {exc}") from exc
        started = True
        send.close()
        deadline = time.monotonic() + seconds
        ready = multiprocessing.connection.wait([receive, reader.sentinel], seconds)
        if ready == [reader.sentinel]:  # its exit status came first (or its forkserver died, exit code 255, while it
            # still reads: its answer may yet come, so it is waited for as long as the time limit leaves)
            ready = multiprocessing.connection.wait([receive], max(0.0, deadline - time.monotonic()))
        outcome: tuple[str, str] | None = None
        if receive in ready:
            with contextlib.suppress(EOFError):  # EOF: it ended without an answer
                outcome = receive.recv()
        elif not ready:
            raise DocumentReadTimeout(f"the {kind[1:]} file took longer than {seconds:g} s to read")
    finally:
        send.close()
        if started:
            if reader.is_alive():
                reader.kill()
            reader.join()
        receive.close()  # a reader still running (its forkserver gone, so not killed above) sees it and exits
    if outcome is None:
        code = reader.exitcode
        if code == -signal.SIGXCPU:  # its CPU limit, set a second past the time limit: a reading too long as well
            raise DocumentReadTimeout(f"the {kind[1:]} file took longer than {seconds:g} s to read")
        # 255 is ambiguous: multiprocessing reports it when the forkserver's pipe is gone (the forkserver died or
        # was killed before the reader's status came back, so its real status is unknown), and a process exiting
        # with status 255 itself would look the same. No reader does (an exception in _read_in_child is exit code
        # 1, its pipe watch's exit 1, a fatal Python error SIGABRT), so 255 is taken as the forkserver's: outside
        if code == 255 or (code is not None and -code in _ENDED_FROM_OUTSIDE):  # the OOM killer's SIGKILL, a
            # service manager's SIGTERM or SIGHUP (the server's own kill comes only after the time limit, above)
            name = f"{signal.Signals(-code).name}, " if code < 0 else ""
            raise DocumentReadersUnavailable(f"the document's reader was ended from outside ({name}exit code {code})")
        if code is not None and code < 0:  # SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL: a crash in the parsing (a
            # library's C code on a crafted file, the stack failing to grow under RLIMIT_AS, a fatal Python error),
            # which the same file would meet again: the document's (422), not retried as the machine's
            raise UnreadableDocument(f"cannot read the {kind[1:]} file: its reader crashed ({_signal_name(-code)})")
        raise UnreadableDocument(f"cannot read the {kind[1:]} file: its reader stopped (exit code {code})")
    error, text = outcome
    if error == "":
        return text
    if error == "MemoryError":
        raise DocumentTooLarge(f"reading it needs more than the {memory // 2**20} MB of memory a document may take")
    raise _ERRORS[error](text)


# the signals that end a reader from outside (503): SIGKILL (the OOM killer, systemd past its stop timeout), SIGTERM
# and SIGHUP (a service manager, a closed terminal). SIGINT is not among them: a reader ignores it (Ctrl-C)
_ENDED_FROM_OUTSIDE = {signal.SIGKILL, signal.SIGTERM, signal.SIGHUP}


def _signal_name(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _exit_with_server(answer: int) -> None:
    """A reader's watch on the pipe its answer goes to, twice a second (SIGALRM; its handler runs between bytecodes of
    the reading): Linux reports POLLERR on a pipe's write end once its read end is closed, so the reader ends within
    about a second of the server (or of the server giving up on it). The forkserver's own end would not come first:
    each reader holds the pipe that keeps the forkserver up. Not a thread: with a second thread, a reading that met
    its memory limit spun for tens of seconds before its MemoryError came out (glibc's malloc under RLIMIT_AS)."""
    poller = select.poll()
    poller.register(answer, 0)  # POLLERR and POLLHUP are reported whatever is asked

    def check(signum: int, frame: object) -> None:
        if poller.poll(0):
            os._exit(1)

    signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)


_ERRORS: dict[str, type[ValueError]] = {
    e.__name__: e for e in (UnsupportedDocument, UnreadableDocument, DocumentTooLarge)
}


def _read_in_child(
    answer: multiprocessing.connection.Connection,
    data: bytes,
    kind: str,
    max_chars: int,
    cpu_seconds: int,
    memory_bytes: int,
) -> None:
    """A reader process's whole life: limits set, extract_text, its outcome sent as (exception class name or "",
    message or text). It dies with the server, kill -9 included (_exit_with_server), past `cpu_seconds` of CPU
    (SIGXCPU, then SIGKILL; the server kills it earlier at its wall-clock limit, so this is a second bound), and
    cannot map more than `memory_bytes` beyond what it maps as it starts; Ctrl-C (SIGINT) does not end it."""
    # Ctrl-C reaches the whole process group of a terminal, readers included (the forkserver's children get its
    # default handler back): a reader ignores it, and ends with the server by its pipe watch instead
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_server(answer.fileno())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU's default action dumps core
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    with contextlib.suppress(OSError):  # Linux: its own size now, in pages; elsewhere the limit is left unset
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_bytes, mapped + memory_bytes))
    try:
        outcome = ("", extract_text(data, kind, max_chars))
    except MemoryError:
        outcome = ("MemoryError", "")
    except (UnsupportedDocument, UnreadableDocument, DocumentTooLarge) as exc:
        outcome = (type(exc).__name__ if type(exc).__name__ in _ERRORS else "UnreadableDocument", str(exc))
    del data
    answer.send(outcome)
    answer.close()


def _check_length(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise DocumentTooLarge(f"its text is longer than {max_chars} characters (TEAMGRAPH_MAX_UPLOAD_BYTES)")


def _docx_text(data: bytes, max_chars: int) -> str:
    """Every paragraph of the body in document order, one a line (a table row is one line, its cells' text joined
    by " | "), after the text of the headers and before that of the footers, each part streamed (see _DocxReader).
    A header or footer part that cannot be read is left out; a main part that cannot be read is UnreadableDocument."""
    if data.startswith(_OLE_MAGIC):  # Word encrypts a docx into an OLE compound file, the format .doc files use
        raise UnreadableDocument(
            "it is a password-protected docx or an old Word .doc file, which the server cannot read: remove the "
            "password, or save it as .docx (or pdf), and upload it again"
        )
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        parts = package.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnreadableDocument(f"cannot read the docx file: {type(exc).__name__}") from None
    unpacked, limit = sum(info.file_size for info in parts), max_chars * DOCX_UNPACKED_FACTOR
    if unpacked > limit:  # zipfile stops at a part's declared size (and fails its CRC): a part cannot lie past it
        raise DocumentTooLarge(f"unpacks to {unpacked} bytes, more than the {limit} byte limit for a docx")
    main = _main_part(package)
    reader = _DocxReader(package, max_chars)
    body = reader.part_text(main, (_DOCUMENT, _BODY))
    headers: list[str] = []
    footers: list[str] = []
    seen: set[tuple[str, str]] = set()
    for name, kind in _header_and_footer_parts(package, main):
        try:
            text = reader.part_text(name, (_HDR,) if kind == _HEADER else (_FTR,))
        except (DocumentTooLarge, MemoryError):
            raise
        except Exception:  # an empty, cut or binary part (a relationship to an image): skipped, not the whole docx;
            continue  # what it read before it failed stays counted against the budgets
        if text.strip() and (kind, text) not in seen:  # a header each section repeats is read once
            seen.add((kind, text))
            (headers if kind == _HEADER else footers).append(text)
    return "\n".join([*headers, body, *footers])


class _DocxReader:
    """Reads parts of one docx within one budget: past `max_chars` characters of text, or past DOCX_ELEMENTS_PER_CHAR
    XML elements per character of it, counted over every part read, the reading stops (413)."""

    def __init__(self, package: zipfile.ZipFile, max_chars: int) -> None:
        self.package, self.max_chars = package, max_chars
        self.max_elements, self.elements, self.read = int(max_chars * DOCX_ELEMENTS_PER_CHAR), 0, 0

    def part_text(self, name: str, path: tuple[str, ...]) -> str:
        """The paragraphs under the element at `path` from the part's root (w:document/w:body, w:hdr, w:ftr), one a
        line. The part is fed to the parser in pieces and no tree is built (the parser calls _PartText for each
        element), so memory stays flat whatever the part's size."""
        from lxml import etree

        target = _PartText(self, name, path)
        # comments and processing instructions: dropped by the parser (the target has no method for them either);
        # millions of `<!---->` (7 bytes each, deflated to nothing) grew a tree past 800 MB when one was built
        parser = etree.XMLParser(
            target=target, remove_comments=True, remove_pis=True, resolve_entities=False, no_network=True
        )
        with self.package.open(name) as xml:
            while not target.done and (chunk := xml.read(65536)):
                parser.feed(chunk)
        if not target.done:
            parser.close()
        return "\n".join(target.lines[0])

    def count_element(self, name: str) -> None:
        self.elements += 1
        if self.elements > self.max_elements:
            raise DocumentTooLarge(
                f"it has more than {self.max_elements} XML elements (its main part, headers and footers count "
                f"together; reading {_shown(name)})"
            )

    def count_text(self, text: str) -> None:
        self.read += len(text)
        _check_length(self.read, self.max_chars)


class _PartText:
    """An lxml parser target collecting one part's paragraphs. Deleted and moved-away revisions (w:del, w:moveFrom)
    and of alternate content all but its first mc:Choice (mc:Fallback is the copy of a text box for older readers)
    are skipped; a paragraph inside another (a text box's) is a line before the one that holds it; a table row is a
    line, its non-empty cells joined by " | " (a cell's paragraphs each a line, a nested table's rows too)."""

    def __init__(self, reader: _DocxReader, name: str, path: tuple[str, ...]) -> None:
        self.reader, self.name, self.path = reader, name, path
        self.tags: list[str] = []  # the open elements, root first
        self.scope = 0  # once inside the element at `path`: the depth it is at
        self.done = False  # past the element at `path`: nothing further is read
        self.skipped = (
            0  # once inside a skipped element (w:del, w:moveFrom, mc:Fallback, a second mc:Choice): its depth
        )
        self.chosen: list[bool] = []  # each open mc:AlternateContent's: whether an mc:Choice of it was read
        self.lines: list[list[str]] = [[]]  # the lines of the part, then of each table cell open within it
        self.rows: list[list[str]] = []  # each open table row's cells
        self.paragraphs: list[list[str]] = []  # each open paragraph's pieces of text
        self.text: list[str] | None = None  # an open w:t's text, when it is read

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        tags = self.tags
        tags.append(tag)
        if self.skipped or self.done:
            pass
        elif tag in _SKIPPED or (tag == _CHOICE and self.chosen and self.chosen[-1]):
            self.skipped = len(tags)
        elif tag == _CHOICE and self.chosen:
            self.chosen[-1] = True
        elif tag == _ALTERNATE_CONTENT:
            self.chosen.append(False)
        elif not self.scope:
            if len(tags) == len(self.path) and tuple(tags) == self.path:
                self.scope = len(tags)
        elif tag == _P:
            self.paragraphs.append([])
        elif tag == _TC:
            self.lines.append([])
        elif tag == _TR:
            self.rows.append([])
        elif tag in _RUN_TEXT and self.paragraphs and tags[-2] == _R:
            if tag == _T:
                self.text = []
            else:
                text = _RUN_TEXT[tag]
                if tag == _BR and attrib.get(_BR_TYPE, "textWrapping") != "textWrapping":
                    text = ""  # a page or column break
                self.paragraphs[-1].append(text)
                self.reader.count_text(text)

    def data(self, text: str) -> None:
        if self.text is not None:
            self.text.append(text)
            self.reader.count_text(text)

    def end(self, tag: str) -> None:
        if not self.done:
            self.reader.count_element(self.name)
        depth = len(self.tags)
        self.tags.pop()
        if self.skipped:
            if depth == self.skipped:
                self.skipped = 0
        elif self.done:
            pass
        elif tag == _ALTERNATE_CONTENT:
            self.chosen.pop()
        elif not self.scope:
            pass
        elif tag == _T:
            if self.text is not None:
                self.paragraphs[-1].append("".join(self.text))
                self.text = None
        elif tag == _P:
            self.lines[-1].append("".join(self.paragraphs.pop()))
        elif tag == _TC:
            cell = self.lines.pop()
            if self.rows:
                self.rows[-1].append("\n".join(cell))
            else:  # a cell outside any row: its lines as they are
                self.lines[-1].extend(cell)
        elif tag == _TR:
            self.lines[-1].append(" | ".join(cell for cell in self.rows.pop() if cell.strip()))
        elif depth == self.scope:
            self.done = True

    def close(self) -> None:
        return None


def _main_part(package: zipfile.ZipFile) -> str:
    """The main document part's name, from the package's relationships (usually word/document.xml)."""
    names = set(package.namelist())
    if "_rels/.rels" not in names:
        raise UnreadableDocument("not a Word document: it has no _rels/.rels")
    # the first officeDocument relationship names the main part (a package has one), looked up in a name set made
    # once: a 1 MB _rels/.rels holds thousands of relationships, and listing each time every one of a zip's
    # thousands of members held 7 s of CPU
    for kind, target in _relationships(package, "_rels/.rels", ""):
        if kind == _OFFICE_DOCUMENT:
            if target not in names:
                raise UnreadableDocument(f"not a Word document: its main document part {_shown(target)} is missing")
            return target
    raise UnreadableDocument("not a Word document: it names no main document part")


def _header_and_footer_parts(package: zipfile.ZipFile, main: str) -> list[tuple[str, str]]:
    """The main part's header and footer parts the package holds, each once, in the order its relationships list
    them: (name, relationship type)."""
    names = set(package.namelist())
    folder, base = posixpath.split(main)
    rels = posixpath.join(folder, "_rels", f"{base}.rels")
    if rels not in names:
        return []
    found: dict[str, str] = {}
    for kind, target in _relationships(package, rels, folder):
        if kind in (_HEADER, _FOOTER) and target in names and target != main:
            found.setdefault(target, kind)
    return list(found.items())


def _relationships(package: zipfile.ZipFile, rels: str, folder: str) -> list[tuple[str, str]]:
    """A relationships part's internal relationships: (type, the zip member its target names from `folder`)."""
    from lxml import etree

    size = package.getinfo(rels).file_size
    if size > 1_000_000:
        raise DocumentTooLarge(f"its {_shown(rels)} unpacks to {size} bytes")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)
    root = etree.fromstring(package.read(rels), parser)
    return [
        (rel.get("Type") or "", _part_name(folder, rel.get("Target") or ""))
        for rel in root
        if rel.get("TargetMode") != "External"
    ]


def _part_name(base: str, target: str) -> str:
    """The zip member a relationship's target names: relative to `base` (the source part's folder) unless it starts
    with "/", %xx escapes decoded, "." and ".." steps resolved (`./word/document.xml` is `word/document.xml`)."""
    path = unquote(target)
    path = path.lstrip("/") if path.startswith("/") else posixpath.join(base, path)
    return posixpath.normpath(path).lstrip("/") if path else ""


def _shown(name: str) -> str:
    """A zip member's or relationship target's name as a message shows it: quoted and escaped (a name may hold line
    breaks and bidi controls), its first 80 characters then "..." (a name may be 64 KB long)."""
    return f"{name[:80]!r}..." if len(name) > 80 else repr(name)
