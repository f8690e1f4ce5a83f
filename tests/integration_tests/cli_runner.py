"""`teamgraph ARGS` run inside the test process (typer's CliRunner), for tests about what a command does.

A real `teamgraph` process costs a Python start and the imports of LangGraph and the graphs (over a second of
CPU each); in the test process they are imported once. The command still opens its own engine on the settings
it reads from the environment given here, in the working directory given here, and reads stdin and writes
stdout/stderr as it would in a process. Tests about the process itself (exit codes of a real process, startup,
what it imports, state that must survive into a new process) run the executable instead.

    result = run_cli(["sessions", "list", "--tenant", "demo"], env={...}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from typer.testing import CliRunner

# what a real process would not see: the test process's own provider and TEAMGRAPH_ settings
_SCRUBBED_PREFIXES = ("TEAMGRAPH_", "LANGCHAIN_")
_SCRUBBED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "LANGSMITH_TRACING")


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`teamgraph *args` with exactly the TEAMGRAPH_/OPENAI_ variables of `env` (others of the test process are
    hidden for the call), in `cwd`; an exception the command did not turn into an exit is in `stderr` with its
    traceback and makes `returncode` 1, as in a process."""
    from server.cli import app

    hidden = {k: None for k in os.environ if k.startswith(_SCRUBBED_PREFIXES) or k in _SCRUBBED}
    wanted = {k: v for k, v in env.items() if k.startswith(_SCRUBBED_PREFIXES) or k in _SCRUBBED}
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(app, list(args), input=stdin, env={**hidden, **wanted})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["teamgraph", *args], result.exit_code, result.stdout, stderr)
