"""`make lint`'s type checker catches a call of a function that no longer exists (what broke `make bench` once)."""

from __future__ import annotations

import subprocess
import sys

from pipelines.common.paths import ROOT

#: The three calls that `make bench` crashed on after the layout change, as they were written.
BROKEN = """
from pipelines.train import check
from pipelines.eval import evaluate as ev

check.truthy(True)
ev.request_key({})
ev.build_messages({})

from pipelines.measure import paths  # a first-party module that does not exist (a rename gone wrong)
"""


def test_mypy_reports_calls_of_functions_that_do_not_exist(tmp_path):
    broken = tmp_path / "broken_bench.py"
    broken.write_text(BROKEN, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(broken)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    found = [line for line in out.stdout.splitlines() if "[attr-defined]" in line]
    assert len(found) == 3, out.stdout
    for name in ("truthy", "request_key", "build_messages"):
        assert any(f'no attribute "{name}"' in line for line in found), out.stdout
    assert any('"pipelines.measure"' in line and "[import-not-found]" in line for line in out.stdout.splitlines())
