"""Shared fixtures. Models are built for real (cached under models/); nothing is mocked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.paths import TINY_BASE, TINY_MODEL
from pipelines.models import pretrain as tiny_base
from pipelines.models import tiny as tiny_model


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


# ---- training -------------------------------------------------------------------------------------

#: Overrides that keep a fixture training run of conf/tiny_lora_*.yaml to some seconds on the CPU.
QUICK_TRAIN = ["max_samples=48", "num_train_epochs=1", "per_device_train_batch_size=8", "logging_steps=1",
               "plot_loss=false"]


def train_environ(**extra: str) -> dict[str, str]:
    """This process's environment without the launch variables a developer may have exported, plus `extra`."""
    import os

    from pipelines.train.launch import CONTROL_VARS, DIST_VARS

    drop = (*CONTROL_VARS, *DIST_VARS)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.fixture(scope="session")
def converted_data_dir(tmp_path_factory) -> Path:
    """cluener and ruozhiba samples converted (`pipelines.data.convert`) into a temporary dataset_dir."""
    from pipelines.common.paths import RAW_DIR
    from pipelines.data import convert

    out = tmp_path_factory.mktemp("converted-data")
    assert convert.main(["cluener", "--raw", str(RAW_DIR / "cluener_sample"), "--out-dir", str(out)]) == 0
    assert convert.main(["ruozhiba", "--raw", str(RAW_DIR / "ruozhiba_sample.json"), "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_cluener_adapter(tmp_path_factory, tiny_base_dir: Path, converted_data_dir: Path) -> Path:
    """A LoRA adapter of the tiny base trained for real by `pipelines.train.launch` (llamafactory-cli) from
    conf/tiny_lora_cluener.yaml, cut down to 48 samples and one epoch; its manifest lies beside it."""
    from pipelines.train import launch as train

    out = tmp_path_factory.mktemp("train") / "cluener"
    rc = train.main(["conf/tiny_lora_cluener.yaml", f"model_name_or_path={tiny_base_dir}",
                     f"dataset_dir={converted_data_dir}", f"output_dir={out}", *QUICK_TRAIN],
                    environ=train_environ())
    assert rc == 0, "training the tiny cluener adapter failed; see the output above"
    return out


#: three epochs of QUICK_TRAIN's size: a checkpoint per epoch (the tiny configs' `save_strategy: epoch`)
CURVE_EPOCHS = 3


@pytest.fixture(scope="session")
def tensorboard_run(tmp_path_factory, tiny_base_dir: Path, converted_data_dir: Path) -> Path:
    """`TRACKER=tensorboard make train` of conf/tiny_lora_cluener.yaml at QUICK_TRAIN's size for three epochs (a
    checkpoint and an eval loss per epoch), for real: what the tracker and `make curve` tests read."""
    from pipelines.train import launch as train

    out = tmp_path_factory.mktemp("tracked") / "cluener"
    quick = [o for o in QUICK_TRAIN if not o.startswith("num_train_epochs=")]
    rc = train.main(["conf/tiny_lora_cluener.yaml", f"model_name_or_path={tiny_base_dir}",
                     f"dataset_dir={converted_data_dir}", f"output_dir={out}", *quick,
                     f"num_train_epochs={CURVE_EPOCHS}"], environ=train_environ(TRACKER="tensorboard"))
    assert rc == 0, "training with TRACKER=tensorboard failed; see the output above"
    return out


# ---- tiers ----------------------------------------------------------------------------------------


def pytest_collection_finish(session):
    """`make test-real` (or any selection holding a `real` test) refuses at once, in one sentence, when the real
    data sets or schemas are missing: no test of that tier runs, none is skipped. It runs after `-m` deselected
    (`make test`'s `-m 'not real'` leaves no `real` test, so a bare clone is never refused)."""
    if not any(item.get_closest_marker("real") for item in session.items):
        return
    from realdata import refusal

    problem = refusal()
    if problem:
        pytest.exit(problem, returncode=1)


@pytest.fixture
def vllm_venv() -> Path:
    """.venv-vllm's python; a test that needs it fails (never skips) without it: `make test` builds it first."""
    from pipelines.common.paths import VENV_VLLM, venv_bin

    python = venv_bin(VENV_VLLM, "python")
    if not venv_bin(VENV_VLLM, "vllm").exists():
        pytest.fail(f"`{python.parent}` has no vllm: run `make setup` (`make test` runs it first).")
    return python
