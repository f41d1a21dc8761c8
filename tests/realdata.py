"""Where the real-data tests find ../shared/datasets; a missing folder fails, it never skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.paths import SHARED_DATASETS


def shared(*parts: str) -> Path:
    path = SHARED_DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"`{path}` not found: the real-data tests read `pipelines.common.paths.SHARED_DATASETS` "
                    "(../shared/datasets beside the repository, present in CI); restore it.")
    return path
