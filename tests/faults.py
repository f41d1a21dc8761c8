"""What the fault tables share (tests/*/test_*_faults.py): running the real command line as a process and
waiting for what it leaves. docs/RELIABILITY.md lists the rows.

Each table row is `(name, fault, expected message or outcome)`. The rows run the real command line as a process,
`python -m pipelines <command> …`, so that "no traceback" is what a user sees, and each asserts the exit code, a
one-line message, and that nothing was lost or half-written: counts that add up (read = written + skipped), an
output folder left byte for byte as it was, no stale file, no process left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.common.paths import ROOT

# ------------------------------------------------------------------------------------------------- helpers


@dataclass
class Run:
    rc: int
    out: str
    err: str


def pipelines(*args, env: dict | None = None, timeout: float = 600) -> Run:
    """`python -m pipelines ARGS…` as a process, from the repository root."""
    p = subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env, check=False)
    return Run(p.returncode, p.stdout, p.stderr)


#: `python -m pipelines ARGS…` with SIGINT handled as at a terminal (a shell's background jobs start with SIGINT
#: ignored, and an ignored SIGINT would stay ignored), so that a test can press Ctrl-C.
CTRL_C_ABLE = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = ['pipelines', *sys.argv[1:]]; runpy.run_module('pipelines', run_name='__main__')")


def one_line(text: str) -> str:
    """The only non-empty line of `text` (asserted), without a traceback."""
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a failed run must leave it exactly so."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds `text` (a run's own output folder, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}: {log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s: {log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)


