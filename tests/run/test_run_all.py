"""`make all`: the plan for both profiles (DRY_RUN) and one real end-to-end run on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipelines.common.errors import PipelinesError
from pipelines.common.net import free_port
from pipelines.common.paths import ROOT, VENV, venv_bin
from pipelines.run import pipeline as run_all


def _dry_run(*args: str) -> str:
    out = subprocess.run([str(venv_bin(VENV, "python")), "-m", "pipelines", "all", "--dry-run", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_dry_run_gpu_profile_prints_the_real_commands():
    run = "pytest-dry-gpu"
    try:
        text = _dry_run("--profile", "gpu", "--model", "Qwen/Qwen2.5-7B-Instruct", "--run", run, "--port", "8011")
    finally:
        shutil.rmtree(ROOT / "results" / run, ignore_errors=True)
    lines = text.splitlines()
    lf = [ln for ln in lines if ln.startswith("$ ") and "llamafactory-cli train" in ln]
    assert any("conf/qwen2.5-7b-instruct_lora_cluener.yaml" in ln for ln in lf), text
    assert any("conf/qwen2.5-0.5b-instruct_lora_ruozhiba.yaml" in ln for ln in lf), text
    assert all("model_name_or_path=Qwen/Qwen2.5-7B-Instruct" in ln for ln in lf) and len(lf) == 2
    serve = [ln for ln in lines if "vllm serve Qwen/Qwen2.5-7B-Instruct" in ln]
    assert len(serve) == 1, text
    assert "--enable-lora" in serve[0] and '"name": "cluener"' in serve[0] and '"name": "ruozhiba"' in serve[0]
    assert "--port 8011" in serve[0] and "--host 127.0.0.1" in serve[0]
    evals = [ln for ln in lines if "pipelines eval " in ln]
    assert len(evals) == 2
    assert "--model qwen2.5-instruct --model cluener" in evals[0] and "--task cluener" in evals[0]
    assert "--model qwen2.5-instruct --model ruozhiba" in evals[1] and "--task ruozhiba" in evals[1]
    assert "tiny-base" not in text  # no tiny model on the GPU path
    assert "pipelines curve" not in text  # the Qwen configs save by steps, not one checkpoint per epoch
    assert "pipelines serve stop" in text


def test_dry_run_cpu_profile_uses_the_tiny_configs():
    run = "pytest-dry-cpu"
    try:
        text = _dry_run("--run", run, "--port", "8012")
    finally:
        shutil.rmtree(ROOT / "results" / run, ignore_errors=True)
    assert "pipelines tiny-base" in text
    assert "llamafactory-cli train conf/tiny_lora_cluener.yaml" in text
    assert "llamafactory-cli train conf/tiny_lora_ruozhiba.yaml" in text
    assert "--served-model-name tiny-base" in text and "--max-lora-rank" in text
    curve = [ln for ln in text.splitlines() if "pipelines curve " in ln]  # the NER adapter's epochs, same server
    assert len(curve) == 1 and f"results/{run}/adapters/cluener --attach --serve" in curve[0], text
    assert "--port 8012" in curve[0]


def test_unknown_profile_is_one_sentence():
    with pytest.raises(PipelinesError, match="`PROFILE=tpu` is unknown"):
        run_all.plan("tpu", None, ROOT / "results" / "x", 8000, {}, None, None)


def test_sized_config_follows_the_model():
    assert run_all.sized("conf/qwen2.5-0.5b-instruct_lora_cluener.yaml", "Qwen/Qwen2.5-7B-Instruct") == \
        "conf/qwen2.5-7b-instruct_lora_cluener.yaml"
    assert run_all.sized("conf/qwen2.5-0.5b-instruct_lora_ruozhiba.yaml", "Qwen/Qwen2.5-7B-Instruct") == \
        "conf/qwen2.5-0.5b-instruct_lora_ruozhiba.yaml"  # no 7B ruozhiba config: the model override applies
    assert run_all.sized("conf/tiny_lora_cluener.yaml", "models/tiny-qwen2-base") == "conf/tiny_lora_cluener.yaml"


def test_criteria_decide_better_by_the_interval_of_the_difference():
    from pipelines.run import report as run_report

    def cmp(a, b, metric, low, high, p=0.001):
        return {"a": a, "b": b, "metric": metric, "diff": (low + high) / 2, "low": low, "high": high, "p_value": p}

    ner_fig = {"invalid_json_rate": 0.0, "trailing_text_rate": 0.0, "type_f1": 0.8, "micro_f1": 0.1,
               "intervals": {"type_f1": {"low": 0.7, "high": 0.9}}}
    ner = {"models": {"b": {**ner_fig, "invalid_json_rate": 1.0, "type_f1": 0.0}, "ner": ner_fig},
           "constrained": {"ner": {**ner_fig, "micro_f1": 0.6}},
           "comparisons": [cmp("ner", "b", "type_f1", 0.6, 0.9),
                           cmp("ner (constrained)", "ner", "micro_f1", -0.01, 0.9, 0.2)]}
    gen = {"models": {"b": {"rouge_l": 5.0}, "gen": {"rouge_l": 6.0}},
           "comparisons": [cmp("b", "gen", "rouge_l", -3.0, -1.0)]}  # stored as base - adapter: turned round
    held = {v.text: v for v in run_report.check_criteria(ner, gen, "b", "ner", "gen")}
    assert [v.ok for v in held.values()] == [True, True, True, True, True, False]
    assert held["NER adapter type-F1 ≥ 0.6 and better than the base"].detail == \
        "`ner` type_f1 0.800 [0.700, 0.900]; Δ type_f1 `ner` − `b` +0.750 [+0.600, +0.900], p 0.001"
    assert held["generation adapter ROUGE-L better than the base"].detail == \
        "Δ rouge_l `gen` − `b` +2.00 [+1.00, +3.00], p 0.001"
    # the constrained adapter's interval reaches below 0: not shown better, whatever its point figure
    assert "[-0.010, +0.900], p 0.200" in held["NER adapter constrained entity micro-F1 ≥ 0.5 and better than "
                                               "unconstrained"].detail
    no_comparisons = run_report.check_criteria({**ner, "comparisons": []}, gen, "b", "ner", "gen")
    assert not no_comparisons[3].ok and "eval spec < 3" in no_comparisons[3].detail
    without = run_report.check_criteria({k: v for k, v in ner.items() if k != "constrained"}, gen, "b", "ner", "gen")
    assert not without[-1].ok and without[-1].detail.startswith("not evaluated")


@pytest.mark.slow
def test_make_all_end_to_end(tiny_base_dir, capfd):
    """The whole pipeline on the bundled samples: report written, both adapters scored, the NER adapter
    beats the base on the output contract, the server is gone afterwards."""
    run = "pytest-e2e"
    port = free_port()
    run_dir = ROOT / "results" / run
    shutil.rmtree(run_dir, ignore_errors=True)
    rc = run_all.main(["--run", run, "--port", str(port)])
    out = capfd.readouterr().out
    assert rc == 0, out[-5000:]
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## What the adapters learned" in report and "Before / after" in report and "Stage times" in report
    ner = json.loads((run_dir / "eval-cluener" / "metrics.json").read_text())["models"]
    gen = json.loads((run_dir / "eval-ruozhiba" / "metrics.json").read_text())["models"]
    assert set(ner) == {"tiny-base", "cluener"} and set(gen) == {"tiny-base", "ruozhiba"}
    assert ner["cluener"]["n"] == ner["tiny-base"]["n"] > 0
    assert 1 - ner["cluener"]["invalid_json_rate"] > 1 - ner["tiny-base"]["invalid_json_rate"] + 0.5
    assert ner["cluener"]["type_f1"] > ner["tiny-base"]["type_f1"]
    assert gen["ruozhiba"]["rouge_l"] > gen["tiny-base"]["rouge_l"]
    assert "[PASS] NER adapter valid-JSON rate" in out or "[FAIL] NER adapter valid-JSON rate" in out
    assert "[PASS] generation adapter ROUGE-L better than the base: Δ rouge_l" in out or \
        "[FAIL] generation adapter ROUGE-L" in out
    assert "better means the 95% interval of the difference" in out
    assert (run_dir / "adapters" / "cluener" / "adapter_config.json").exists()
    curve = json.loads((run_dir / "adapters" / "cluener" / "curve" / "curve.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in curve["rows"]] == [1, 2, 3] and curve["best"]["checkpoint"] in report
    assert "every epoch's checkpoint" in report
    assert not (ROOT / ".serve" / str(port) / "server.pid").exists()  # stopped


@pytest.mark.parametrize("serve, prefix", [("serve/tiny.yaml", "conf/tiny_lora_"),
                                           ("serve/qwen2.5-0.5b.yaml", "conf/qwen2.5-0.5b-instruct_lora_")])
def test_serve_configs_serve_what_the_train_configs_write(serve, prefix):
    import yaml

    adapters = yaml.safe_load((ROOT / serve).read_text(encoding="utf-8"))["adapters"]
    for task, path in adapters.items():
        train = yaml.safe_load((ROOT / f"{prefix}{task}.yaml").read_text(encoding="utf-8"))
        assert train["output_dir"] == path, (serve, task)


@pytest.mark.parametrize("var, value, words", [("SAMPLES", "abc", "`SAMPLES=abc` is not a whole number"),
                                               ("EVAL_LIMIT", "0", "`EVAL_LIMIT=0` must be at least 1"),
                                               ("PORT", "80x", "`PORT=80x` is not a whole number")])
def test_a_bad_number_in_the_environment_is_one_sentence(monkeypatch, capsys, var, value, words):
    monkeypatch.setenv(var, value)
    assert run_all.main(["--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
