"""`make curve`: every epoch's checkpoint of one real training run served from one real vLLM server and scored, the
best epoch named, the figures logged into the run's TensorBoard log; a row equals a separate `make eval` of that
checkpoint; a rerun sends nothing; a run without checkpoints is refused."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import CURVE_EPOCHS
from faults import one_line, pipelines

from pipelines.common.paths import TRAIN_MANIFEST
from pipelines.run import curve
from pipelines.train import trackers

LIMIT = "24"


def _checkpoint(out: Path, step: int, mtime: float | None = None) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for name in ("trainer_state.json", "adapter_model.safetensors"):
        (ckpt / name).write_text("{}", encoding="utf-8")
    if mtime is not None:
        os.utime(ckpt / "trainer_state.json", (mtime, mtime))
    return ckpt


def test_fewer_than_two_checkpoints_is_refused_naming_save_strategy(tmp_path):
    _checkpoint(tmp_path, 6)
    run = pipelines("curve", tmp_path)
    assert run.rc == 1
    assert one_line(run.err) == (f"curve: `{tmp_path}` holds 1 checkpoint and no training manifest "
                                 f"(`{TRAIN_MANIFEST}`: not a `make train` output_dir); a curve needs two "
                                 "or more: train with `save_strategy=epoch` (the tiny configs' setting) and "
                                 "`num_train_epochs` of 2 or more.")
    (tmp_path / TRAIN_MANIFEST).write_text(json.dumps({"config": {"save_strategy": False}}), encoding="utf-8")
    run = pipelines("curve", tmp_path)
    assert run.rc == 1 and one_line(run.err).startswith(f"curve: `{tmp_path}` holds 1 checkpoint (`save_strategy: "
                                                        "no`); a curve needs two or more")
    run = pipelines("curve", tmp_path / "nope")
    assert run.rc == 1 and one_line(run.err) == (f"curve: `{tmp_path / 'nope'}` does not exist; give ADAPTER= the "
                                                 "`output_dir` of a training run (e.g. `saves/tiny/lora/cluener`).")


def test_checkpoints_before_a_resume_are_the_runs_own(tmp_path):
    """After `RESUME=1` the manifest's `started` is the resume's: the checkpoints up to the one it resumed from are
    older and still the run's; a later one that is older than the run is another run's."""
    now = time.time()
    found = [_checkpoint(tmp_path, 75, now - 600), _checkpoint(tmp_path, 150, now - 300), _checkpoint(tmp_path, 225)]
    started = datetime.fromtimestamp(now - 60, UTC).isoformat(timespec="seconds")
    resumed = {"started": started, "resumed_from": f"{tmp_path.name}/checkpoint-150", "config": {}}
    curve.check_run(tmp_path, found, resumed)
    with pytest.raises(curve.CurveError, match=r"^`checkpoint-75`, `checkpoint-150` of .* are older than the run"):
        curve.check_run(tmp_path, found, {**resumed, "resumed_from": None})
    with pytest.raises(curve.CurveError, match=r"^`checkpoint-150` of .* are older than the run"):
        curve.check_run(tmp_path, found, {**resumed, "resumed_from": f"{tmp_path.name}/checkpoint-75"})


def test_best_and_ties_use_the_paired_comparisons():
    rows = [{"name": "r-checkpoint-6", "checkpoint": "checkpoint-6", "epoch": 1.0, "step": 6},
            {"name": "r-checkpoint-12", "checkpoint": "checkpoint-12", "epoch": 2.0, "step": 12},
            {"name": "r-checkpoint-18", "checkpoint": "checkpoint-18", "epoch": 3.0, "step": 18}]
    cmp = [{"a": "r-checkpoint-6", "b": "r-checkpoint-12", "metric": "micro_f1", "diff": -0.2, "low": -0.3,
            "high": -0.1, "p_value": 0.001},
           {"a": "r-checkpoint-18", "b": "r-checkpoint-12", "metric": "micro_f1", "diff": -0.01, "low": -0.05,
            "high": 0.03, "p_value": 0.6}]
    metrics = {"models": {"r-checkpoint-6": {"micro_f1": 0.1}, "r-checkpoint-12": {"micro_f1": 0.3},
                          "r-checkpoint-18": {"micro_f1": 0.29}},
               "constrained": {"r-checkpoint-12": {"micro_f1": 0.6}}, "comparisons": cmp}
    out = curve.build_curve(rows, metrics, "cluener")
    assert out["best"] == {"epoch": 2.0, "step": 12, "checkpoint": "checkpoint-12"}
    assert out["ties"] == ["checkpoint-18"] and out["rows"][0]["tied_with_best"] is False
    assert out["rows"][1]["constrained"] == {"micro_f1": 0.6} and out["rows"][0]["constrained"] is None


@pytest.fixture(scope="module")
def curved(tensorboard_run: Path) -> tuple[Path, dict]:
    """`make curve` of the three-epoch TensorBoard run, for real (its own server, stopped afterwards)."""
    assert curve.main([str(tensorboard_run), "--limit", LIMIT]) == 0
    return tensorboard_run, json.loads((tensorboard_run / "curve" / "curve.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_curve_scores_every_checkpoint_and_logs_into_the_runs_tensorboard(curved):
    out, data = curved
    assert [r["checkpoint"] for r in data["rows"]] == [f"checkpoint-{6 * e}" for e in range(1, CURVE_EPOCHS + 1)]
    assert [r["epoch"] for r in data["rows"]] == [1.0, 2.0, 3.0]
    for r in data["rows"]:
        assert r["loss"] > 0 and r["eval_loss"] > 0 and "micro_f1" in r["metrics"] and "micro_f1" in r["constrained"]
    assert data["best"]["checkpoint"] in {r["checkpoint"] for r in data["rows"]} and data["main_metric"] == "micro_f1"
    assert (out / "curve" / "curve.png").stat().st_size > 0
    samples = (out / "curve" / "samples.md").read_text(encoding="utf-8")
    assert samples.count("\n## `") == curve.DEFAULT_SAMPLES and "\n| 3 | `" in samples
    tracked = json.loads((out / "pipelines_manifest.json").read_text(encoding="utf-8"))["tracker"]
    scalars = trackers.tensorboard_scalars(tracked["dir"])
    assert "train/loss" in scalars  # the training's own, in the same run
    logged = scalars["curve/micro_f1"]
    assert [s for s, _ in logged] == [r["step"] for r in data["rows"]]
    assert [v for _, v in logged] == pytest.approx([r["metrics"]["micro_f1"] for r in data["rows"]])
    assert [s for s, _ in scalars["curve/constrained/micro_f1"]] == [6, 12, 18]
    texts = trackers.tensorboard_texts(tracked["dir"])["curve/samples"]  # each checkpoint's answers at its step
    assert [s for s, _ in texts] == [6, 12, 18] and all(f"`checkpoint-{s}`" in t for s, t in texts)
    assert all(f"`{r['id']}`" in texts[0][1] for r in json.loads(Path(data["data"]).read_text(encoding="utf-8"))[:3])


@pytest.mark.slow
def test_a_rerun_sends_nothing_starts_no_server_and_logs_nothing_again(curved, capsys):
    out, data = curved
    predictions = {p: p.stat().st_size for p in (out / "curve" / "eval").rglob("predictions.jsonl")}
    events = sorted(Path(data["tracker"]).glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert curve.main([str(out), "--limit", LIMIT]) == 0
    said = capsys.readouterr().out
    assert "scored 3 models without a server" in said and "nothing logged again" in said and "vllm serve" not in said
    assert {p: p.stat().st_size for p in predictions} == predictions
    assert sorted(Path(data["tracker"]).glob("events.out.tfevents.*")) == events
    again = json.loads((out / "curve" / "curve.json").read_text(encoding="utf-8"))
    assert again["eval"]["requests_sent"] == 0 and again["rows"] == data["rows"]


@pytest.mark.slow
def test_a_row_equals_a_separate_eval_of_that_checkpoint(curved, tmp_path):
    from pipelines import serve
    from pipelines.common.paths import ROOT

    out, data = curved
    row = data["rows"][1]
    alone = tmp_path / "alone"
    shutil.copytree(out / row["checkpoint"], alone)  # its own folder: nothing of the curve's answers is reused
    cfg = serve.load(ROOT / "serve" / "tiny.yaml")
    cfg.adapters, cfg.max_loras = {"alone": str(alone)}, 1
    cfg.model = json.loads((out / "pipelines_manifest.json").read_text(encoding="utf-8"))["config"]["model_name_or_path"]
    with serve.running(cfg, free=True) as served:
        run = pipelines("eval", "--base-url", served.base_url, "--task", "cluener", "--data", data["data"],
                        "--model", "alone", "--out", tmp_path / "eval", "--limit", LIMIT, "--constrain", "both")
    assert run.rc == 0, run.err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    for side, key in (("models", "metrics"), ("constrained", "constrained")):
        got = {k: v for k, v in metrics[side]["alone"].items() if k != "intervals"}
        assert got == {k: v for k, v in row[key].items() if k != "intervals"}, side


@pytest.mark.slow
def test_checkpoints_of_a_base_rebuilt_since_training_are_refused(tensorboard_run, tmp_path):
    copy = tmp_path / tensorboard_run.name
    shutil.copytree(tensorboard_run, copy, ignore=shutil.ignore_patterns("curve", "tracker"))
    manifest = json.loads((copy / "pipelines_manifest.json").read_text(encoding="utf-8"))
    manifest["base_model"]["weights_fingerprint"] = "0" * 64  # as if the base had been rebuilt after training
    (copy / "pipelines_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    run = pipelines("curve", copy, "--limit", LIMIT)
    assert run.rc == 1 and not (copy / "curve").exists()
    said = one_line(run.err)
    assert said.startswith(f"curve: adapter `{copy.name}` was trained on other weights of ") and "retrain it" in said
