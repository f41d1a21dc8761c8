"""Shared fixtures. Models are built for real (cached under models/); nothing is mocked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import tiny_base, tiny_model
from pipelines.paths import TINY_BASE, TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """models/tiny-qwen2: random weights, local tokenizer (built in seconds, cached)."""
    assert tiny_model.main(["--out", TINY_MODEL]) == 0
    return Path(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_model_dir: Path) -> Path:
    """models/tiny-qwen2-base: the tiny model after its CPU pre-training (about a minute, cached)."""
    assert tiny_base.main(["--model", str(tiny_model_dir), "--out", TINY_BASE]) == 0
    return Path(TINY_BASE)
