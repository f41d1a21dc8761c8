"""The tiers in a clone with nothing beside it: `make test`'s selection runs, `make test-real` refuses in one
sentence before running anything (tests/realdata.py, conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.common.paths import ROOT


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIPELINES_SHARED": "/nonexistent-shared"}  # as a bare clone: no ../shared, no downloads/
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_bare_clone_collects_make_test_and_refuses_make_test_real():
    bare = _pytest("--collect-only", "tests/data", "tests/serve/test_deploy.py", "tests/eval/test_grammars.py")
    assert bare.returncode == 0, bare.stdout[-2000:] + bare.stderr[-2000:]
    assert "deselected" in bare.stdout and "make test-real" not in bare.stdout
    real = _pytest("-m", "real", "tests/data", "tests/serve/test_deploy.py", "tests/eval/test_grammars.py")
    assert real.returncode == 1, real.stdout[-2000:]
    said = [ln for ln in (real.stdout + real.stderr).splitlines() if "make test-real:" in ln]
    assert said and "`/nonexistent-shared` lacks 7 of the real tier's inputs" in said[0]
    assert "make download" in said[0] and "PIPELINES_SHARED=DIR" in said[0]
    assert " passed" not in real.stdout and " skipped" not in real.stdout
