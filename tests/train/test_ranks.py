"""Training on two ranks for real on the CPU (torchrun through llamafactory-cli, gloo): the same global batch and
loss as one process, and a resume from a checkpoint two ranks wrote."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import QUICK_TRAIN, train_environ

from pipelines.common.paths import TRAIN_MANIFEST
from pipelines.train import launch as train

CONFIG = "conf/tiny_lora_cluener.yaml"
#: QUICK_TRAIN with a batch of 4 × accumulation 2 (a global batch of 8: 48 samples in 6 steps), which two ranks
#: split as 4 × 1 each; a checkpoint every 3 steps for the resume.
RANKED = [*QUICK_TRAIN, "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "do_eval=false",
          "report_to=none", "save_strategy=steps", "save_steps=3", "--no-check"]


def _train(out: Path, tiny_base_dir: Path, data: Path, **environ: str) -> dict:
    rc = train.main([CONFIG, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={data}", f"output_dir={out}",
                     *RANKED], environ=train_environ(**environ))
    assert rc == 0, "training failed; see the output above"
    return json.loads((out / TRAIN_MANIFEST).read_text())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_base_dir, converted_data_dir) -> Path:
    out = tmp_path_factory.mktemp("ranks") / "two"
    _train(out, tiny_base_dir, converted_data_dir, NPROC_PER_NODE="2")
    return out


def _losses(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
def test_two_ranks_train_the_same_global_batch_and_loss_as_one(two_ranks, tmp_path, tiny_base_dir,
                                                                converted_data_dir):
    two = json.loads((two_ranks / TRAIN_MANIFEST).read_text())
    one = _train(tmp_path / "one", tiny_base_dir, converted_data_dir)
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert two["global_batch"] == one["global_batch"] == 8
    assert two["launcher_env"]["NPROC_PER_NODE"] == "2" and two["launcher_env"]["FORCE_TORCHRUN"] == "1"
    # each rank trained 4 × 1 over gloo; the one process 4 × 2
    assert two["config"]["gradient_accumulation_steps"] == 1 and two["config"]["ddp_backend"] == "gloo"
    assert two["overrides"][-2:] == ["gradient_accumulation_steps=1", "ddp_backend=gloo"]
    assert one["config"]["gradient_accumulation_steps"] == 2 and "ddp_backend" not in one["config"]
    assert two["results"]["global_step"] == one["results"]["global_step"] == 6  # 48 samples / 8 a step
    state = json.loads((two_ranks / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 4  # per device
    a, b = two["results"]["train_loss"], one["results"]["train_loss"]
    assert math.isfinite(a) and math.isfinite(b)
    assert abs(a - b) <= 0.10 * b, f"two ranks' train loss {a:.4f} is not within 10% of one process's {b:.4f}"
    assert (two_ranks / "adapter_model.safetensors").is_file()
    # every rank saved its random state, so that a resume continues each rank's stream
    assert {p.name for p in (two_ranks / "checkpoint-3").glob("rng_state_*.pth")} == {"rng_state_0.pth",
                                                                                       "rng_state_1.pth"}


@pytest.mark.slow
def test_two_ranks_resume_from_a_checkpoint_two_ranks_wrote(two_ranks, tmp_path, tiny_base_dir, converted_data_dir):
    # the run as if stopped after checkpoint-3: its later checkpoint and its final weights removed
    out = tmp_path / "resumed"
    shutil.copytree(two_ranks / "checkpoint-3", out / "checkpoint-3")
    m = _train(out, tiny_base_dir, converted_data_dir, NPROC_PER_NODE="2", RESUME="1")
    assert m["resumed_from"] == str(out / "checkpoint-3") and m["world_size"] == 2 and m["global_batch"] == 8
    assert m["results"]["global_step"] == 6
    resumed, whole = _losses(out), _losses(two_ranks)
    assert sorted(resumed) == list(range(1, 7))  # steps 1-3 carried over, 4-6 trained once
    # the resumed steps see the same batches as the uninterrupted run (each rank's sampler and random state)
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([whole[s] for s in (4, 5, 6)], rel=0.02)
    assert (out / "adapter_model.safetensors").is_file()
