"""Every error code the server can send is in the error table of docs/api.md (the voice codes in docs/voice.md's),
under the status it is sent with: read from the code itself, so a new code without a line in the table fails here.

The codes are found where the code sets them: ApiError / BodyRejected / VoiceError(status, code, ...),
error_body(code, ...), and the `code` (and `status`) class attributes of the exceptions the error handlers turn
into answers. 403 admin_required, 405 method_not_allowed and 409 user_id_conflict were missing from the table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from server.errors import _CODES

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("server", "checkpoints", "personas", "states")
CALLS = {"ApiError": 1, "BodyRejected": 1, "VoiceError": 1, "error_body": 0}  # the code's argument position
# codes of exception classes no API route can meet: the tenant comes from the key (tenant_not_found), and every
# resolve() with a session asks for the session's own team (team_error, "session belongs to team ...")
NOT_SENT = {"tenant_not_found", "team_error"}


def sent_codes() -> dict[str, set[int | None]]:
    """code -> the statuses it is sent with (None where the status is not written next to it)."""
    codes: dict[str, set[int | None]] = {}
    for source in SOURCES:
        for path in sorted((REPO / source).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    at = CALLS.get(name or "")
                    if at is None or len(node.args) <= at or not isinstance(node.args[at], ast.Constant):
                        continue
                    status = node.args[0] if at == 1 else None
                    value = status.value if isinstance(status, ast.Constant) else None
                    codes.setdefault(node.args[at].value, set()).add(value)
                elif isinstance(node, ast.ClassDef):
                    attrs = {
                        target.id: stmt.value.value
                        for stmt in node.body
                        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
                        for target in stmt.targets
                        if isinstance(target, ast.Name)
                    }
                    if isinstance(attrs.get("code"), str):
                        codes.setdefault(attrs["code"], set()).add(attrs.get("status"))
    # the router's own answers (an unknown path, a method the path does not take), through errors._CODES
    for status in (404, 405):
        codes.setdefault(_CODES[status], set()).add(status)
    return codes


def documented(doc: str) -> dict[str, set[int]]:
    """code -> statuses, from the table under `## Errors` in `doc`."""
    text = (REPO / doc).read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[int]] = {}
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not re.search(r"\d{3}", cells[1]):
            continue
        statuses = {int(s) for s in re.findall(r"\b\d{3}\b", cells[1])}
        for code in re.findall(r"`([a-z]+(?:_[a-z]+)+|[a-z]+)`", "|".join(cells[2:])):
            table.setdefault(code, set()).update(statuses)
    return table


def test_every_code_the_server_sends_is_in_the_error_table() -> None:
    api, voice = documented("docs/api.md"), documented("docs/voice.md")
    codes = sent_codes()
    assert {"admin_required", "user_id_conflict", "method_not_allowed", "validation_error"} <= codes.keys()
    missing, wrong_status = [], []
    for code, statuses in sorted(codes.items()):
        if code in NOT_SENT:
            continue
        listed = api.get(code, set()) | (
            voice.get(code, set()) if code.startswith(("voice_", "transcript_")) else set()
        )
        if not listed:
            missing.append(code)
        wrong_status += [f"{status} {code}" for status in statuses if status is not None and status not in listed]
    assert not missing, f"codes the server sends that docs/api.md's error table leaves out: {missing}"
    assert not wrong_status, f"sent with a status the table does not list them under: {wrong_status}"
