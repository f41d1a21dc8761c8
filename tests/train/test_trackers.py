"""`TRACKER=`: the overrides and environment of each tracker exactly, and real runs read back with each tracker's own
files: TensorBoard's event reader, SwanLab's local log (nothing sent anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CURVE_EPOCHS, QUICK_TRAIN, train_environ

from pipelines.common.paths import TRAIN_MANIFEST
from pipelines.train import trackers
from pipelines.train.manifest import stale_reason


def test_each_tracker_sets_llamafactorys_own_options(tmp_path):
    out = tmp_path / "run"
    over, env, where = trackers.plan("tensorboard", out, "20260101-000000")
    assert over == ["report_to=tensorboard"]
    assert env == {"TENSORBOARD_LOGGING_DIR": str(out / "tracker" / "tensorboard" / "20260101-000000")}
    assert where == {"kind": "tensorboard", "dir": out / "tracker" / "tensorboard" / "20260101-000000"}
    over, env, where = trackers.plan("swanlab", out, "s")
    assert over[:3] == ["report_to=none", "use_swanlab=true", "swanlab_mode=local"]
    assert f"swanlab_logdir={out / 'tracker' / 'swanlab'}" in over and env == {"SWANLAB_MODE": "local"}
    assert trackers.plan("none", out, "s") == (["report_to=none"], {}, {"kind": "none", "dir": None})


def test_tracker_variable():
    assert trackers.kind({}) is None and trackers.kind({"TRACKER": ""}) is None
    assert trackers.kind({"TRACKER": "SwanLab"}) == "swanlab"
    with pytest.raises(trackers.TrackerError, match=r"^`TRACKER=wandb` is not a tracker; use one of: tensorboard"):
        trackers.kind({"TRACKER": "wandb"})


def test_dry_run_shows_the_trackers_environment(capsys):
    from pipelines.train import launch as train

    assert train.main(["conf/tiny_lora_cluener.yaml", "output_dir=saves/x", "--dry-run", "--no-check"],
                      environ=train_environ(TRACKER="tensorboard")) == 0
    out = capsys.readouterr().out
    assert "report_to=tensorboard" in out and "TENSORBOARD_LOGGING_DIR=" in out and "saves/x/tracker/tensorboard/" in out


@pytest.mark.slow
def test_tensorboard_run_holds_the_loss_and_the_manifest_names_it(tensorboard_run: Path):
    manifest = json.loads((tensorboard_run / TRAIN_MANIFEST).read_text(encoding="utf-8"))
    tracked = manifest["tracker"]
    assert tracked["kind"] == "tensorboard" and "/tracker/tensorboard/" in tracked["dir"]
    scalars = trackers.tensorboard_scalars(tracked["dir"])
    steps = [s for s, _ in scalars["train/loss"]]
    assert steps == sorted(steps) and len(steps) == manifest["results"]["global_step"]  # logging_steps=1
    # eval_strategy: epoch, then do_eval's final one
    assert [s for s, _ in scalars["eval/loss"]] == [6 * e for e in range(1, CURVE_EPOCHS + 1)] + [6 * CURVE_EPOCHS]
    # the tracker's keys do not make the run stale: the same config without TRACKER is this run
    assert stale_reason(tensorboard_run, {k: v for k, v in manifest["config"].items()
                                          if k not in trackers.TRACKER_KEYS}) is None


@pytest.mark.slow
def test_swanlab_local_run_holds_the_loss(tmp_path, tiny_base_dir, converted_data_dir):
    from pipelines.train import launch as train

    out = tmp_path / "swan"
    quick = [o for o in QUICK_TRAIN if not o.startswith("num_train_epochs=")]
    rc = train.main(["conf/tiny_lora_cluener.yaml", f"model_name_or_path={tiny_base_dir}",
                     f"dataset_dir={converted_data_dir}", f"output_dir={out}", *quick, "num_train_epochs=2"],
                    environ=train_environ(TRACKER="swanlab"))
    assert rc == 0
    tracked = json.loads((out / TRAIN_MANIFEST).read_text(encoding="utf-8"))["tracker"]
    assert tracked["kind"] == "swanlab" and tracked["run"].endswith(tracked["id"])
    series = trackers.swanlab_series(tracked["dir"], tracked["id"])
    assert len(series["train/loss"]) == 12 and all(isinstance(v, float) for _, v in series["train/loss"])
    assert [s for s, _ in series["eval/loss"]] == [6, 12]  # SwanLab keeps one value a step
    # curve figures logged later land in the same local run (resumed by its id)
    trackers.log(tracked, {"curve/micro_f1": [(6, 0.25), (12, 0.5)]}, {"curve/samples": [(12, "hello")]})
    series = trackers.swanlab_series(tracked["dir"], tracked["id"])
    assert series["curve/micro_f1"] == [(6, 0.25), (12, 0.5)] and series["curve/samples"] == [(12, ["hello"])]
