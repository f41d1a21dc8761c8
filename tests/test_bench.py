"""The pure parts of the benchmarks (the benchmarks themselves print figures; they are not tests)."""

from __future__ import annotations

import json

import pytest

from pipelines.bench import common, report, seeds, train

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
    s = common.summarise([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    assert s["values"] == [3.0, 1.0, 2.0, 10.0]
    with pytest.raises(ValueError):
        common.summarise([])


def test_summarise_runs_keeps_numeric_figures_present_in_every_run():
    runs = [{"a": 1, "b": 2.0, "name": "x", "flag": True, "c": 5}, {"a": 3, "b": 4.0, "name": "y", "flag": False}]
    out = common.summarise_runs(runs)
    assert set(out) == {"a", "b"}
    assert out["a"]["median"] == 2.0 and out["b"]["max"] == 4.0
    assert common.median_of(out, "a") == 2.0 and common.median_of(out, "zzz") is None


@pytest.mark.parametrize("ours, theirs, expected", [
    (3.0, 2.0, 1.5),
    (1.0, 4.0, 0.25),
    (1.0, 0.0, None),
    (None, 2.0, None),
    (2.0, None, None),
])
def test_ratio(ours, theirs, expected):
    assert common.ratio(ours, theirs) == expected


def test_percentile_interpolates_like_numpy():
    vals = [10, 20, 30, 40, 50]
    assert common.percentile(vals, 50) == 30
    assert common.percentile(vals, 95) == pytest.approx(48.0)
    assert common.percentile([7], 95) == 7


def test_fmt_spread_and_table():
    assert common.fmt(None) == "-" and common.fmt(1234.5) == "1,234" and common.fmt(0.12345) == "0.123"
    assert common.spread(common.summarise([2.0])) == "2"
    assert common.spread(common.summarise([1.0, 2.0, 4.0])) == "2 (1–4)"
    t = common.table(["a", "bb"], [["x", 1.5]]).splitlines()
    assert t[0] == "| a | bb  |" and t[2] == "| x | 1.5 |"


def test_ours_overrides_match_the_baseline_settings(tmp_path):
    ov = dict(o.split("=", 1) for o in train.ours_overrides(model="m", data_dir=tmp_path, out_dir=tmp_path / "o",
                                                             samples=32, epochs=2))
    assert ov["per_device_train_batch_size"] == "16" and ov["learning_rate"] == "0.0001"
    assert ov["max_samples"] == "32" and ov["num_train_epochs"] == "2"
    assert ov["train_sampling_strategy"] == "group_by_length" and ov["save_strategy"] == "'no'"


def test_report_writes_from_result_files(tmp_path):
    result = {
        "benchmark": "convert", "quick": True, "mode": "quick (small sizes: noisy, not for comparison)",
        "repeats": 1, "measured_at": "2026-01-01T00:00:00", "machine": {"cpu": "X", "cores": 2},
        "settings": {"data": {"source": "real"}}, "ratio": 0.5,
        "ours": {"records_per_s": common.summarise([10.0])}, "theirs": {"records_per_s": common.summarise([20.0])},
        "launch": None, "command": "python -m pipelines bench convert",
    }
    common.write_result("convert", result, tmp_path)
    out = report.write(tmp_path, tmp_path / "BENCHMARKS.md")
    text = out.read_text(encoding="utf-8")
    assert "Quick mode" in text and "| convert   | quick | 0.5" in text


def test_precision_of_ours_follows_make_train(tmp_path):
    cpu_cfg = tmp_path / "cpu.yaml"
    cpu_cfg.write_text("use_cpu: true\nbf16: true\n")
    assert train.precision_overrides(cpu_cfg, cuda=True) == ["use_cpu=false"]  # the tiny configs on a GPU
    from pipelines.common import device as gpu

    expected = [] if gpu.cpu_native_bf16() else ["bf16=false"]
    assert train.precision_overrides(cpu_cfg, cuda=False) == expected


def _train_result(with_fp32: bool) -> dict:
    def side(x: float) -> dict:
        return {"samples_per_s": common.summarise([x]), "tokens_per_s": common.summarise([x * 200])}

    scenario = {
        "description": "d", "ours": side(120.0), "theirs": side(60.0),
        "ratio": 2.0, "ratios": {"samples_per_s": 2.0, "tokens_per_s": 2.0, "peak_rss (theirs/ours)": 1.0},
        "theirs_padding": {"max_source": 200, "max_target": 70, "longest_prompt": 200, "longest_response": 50,
                           "mean_prompt": 150.0, "mean_response": 20.0, "pad_fraction": 0.3},
    }
    if with_fp32:
        scenario["ours_fp32"] = side(90.0)
        scenario["ratios"]["samples_per_s at equal precision (ours fp32)"] = 1.5
    return {"benchmark": "train", "quick": False, "mode": "full", "repeats": 3, "measured_at": "2026-01-01T00:00:00",
            "machine": {"cpu": "X", "cores": 2}, "ratio": 2.0, "ratios": scenario["ratios"], "target_ratio": 1.5,
            "settings": {"model": "models/qwen2.5-0.5b-shape", "ours_precision": "bf16 autocast" if with_fp32 else "fp32"},
            "ours": scenario["ours"], "theirs": scenario["theirs"], "scenarios": {"project": scenario}}


def test_train_render_shows_the_fp32_side_and_the_equal_precision_ratio():
    text = train.render(_train_result(True))
    assert "ours in fp32" in text and "| 90 " in text and "at equal precision (ours in fp32): 1.5" in text
    plain = train.render(_train_result(False))
    assert "ours in fp32" not in plain and "equal precision" not in plain


def test_report_adds_the_gpu_section_and_the_equal_precision_ratio(tmp_path):
    common.write_result("train", _train_result(True), tmp_path)
    common.write_result("train", _train_result(False), tmp_path / "gpu")
    text = report.write(tmp_path, tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "1.5 with ours in fp32 too" in text
    assert "## train on a GPU" in text and "qwen2.5-0.5b-shape" in text
    (tmp_path / "gpu" / "train.json").unlink()
    assert "## train on a GPU" not in report.write(tmp_path, tmp_path / "B2.md").read_text(encoding="utf-8")
