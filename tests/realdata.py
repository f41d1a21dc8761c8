"""The `real` tier (`make test-real`): tests that read the real data sets and the official deployment schemas.

They live in `pipelines.common.paths.SHARED` (`PIPELINES_SHARED=DIR`, else ../shared beside the repository as in
CI, else what `make download` fetched into downloads/). `make test` deselects them (`-m "not real"` in
pyproject.toml), so a bare clone passes it; `make test-real` refuses in one sentence when the inputs are
missing (conftest.py), and a test never skips for want of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.paths import SHARED, SHARED_ENV

#: What the real tier reads, under SHARED.
NEEDED = ("datasets/cluener2020/train.json", "datasets/cluener2020/dev.json",
          "datasets/ruozhiba_gpt4/ruozhiba_qa2449_gpt4o.json", "datasets/ruozhiba_gpt4/ruozhiba_qa2449_gpt4t.json",
          "datasets/huanhuan/huanhuan.json", "deploy/compose-spec/compose-spec.json",
          "deploy/vllm-stack/values.schema.json")

real = pytest.mark.real


def missing(root: Path = SHARED) -> list[str]:
    return [n for n in NEEDED if not (root / n).is_file()]


def refusal(root: Path = SHARED) -> str | None:
    """One sentence when the real tier's inputs are missing, else None."""
    gone = missing(root)
    if not gone:
        return None
    return (f"make test-real: `{root}` lacks {len(gone)} of the real tier's inputs (first: `{gone[0]}`); run "
            f"`make download` (then `{SHARED_ENV}=downloads make test-real`) or set `{SHARED_ENV}=DIR` to a folder "
            "holding `datasets/` and `deploy/` (CI: ../shared).")


def shared(*parts: str) -> Path:
    """A path under SHARED/datasets; only `real` tests call it, after conftest checked the inputs."""
    path = SHARED.joinpath("datasets", *parts)
    if not path.exists():
        pytest.fail(refusal() or f"`{path}` not found.")
    return path


def schema(relpath: str) -> Path:
    """A path under SHARED/deploy (e.g. `compose-spec/compose-spec.json`)."""
    path = SHARED.joinpath("deploy", relpath)
    if not path.is_file():
        pytest.fail(refusal() or f"`{path}` not found.")
    return path
