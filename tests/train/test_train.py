"""Real LoRA training on the CPU with llamafactory-cli — adapter, manifest, resume, export, sweep."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK_TRAIN, train_environ

from pipelines.common import device as gpu
from pipelines.common.io import file_sha256, weights_fingerprint
from pipelines.common.paths import ROOT, TRAIN_MANIFEST
from pipelines.train import export, grid, manifest
from pipelines.train import launch as train

CONFIG = "conf/tiny_lora_cluener.yaml"
PROMPTS = ["<|im_start|>user\n抽取实体：张伟在北京大学工作。<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\n《长津湖》上映首周票房突破十亿元。<|im_end|>\n<|im_start|>assistant\n"]


def logits(model, tokenizer):
    import torch

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.slow
def test_tiny_config_trains_an_adapter_with_a_manifest(tiny_cluener_adapter: Path, tiny_base_dir: Path,
                                                        converted_data_dir: Path):
    out = tiny_cluener_adapter
    assert (out / "adapter_model.safetensors").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and adapter["lora_alpha"] == 128
    assert adapter["base_model_name_or_path"] == str(tiny_base_dir)
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert not adapter.get("modules_to_save") and not adapter.get("use_dora")

    m = json.loads((out / TRAIN_MANIFEST).read_text())
    assert m["config_file"] == CONFIG and m["exit_code"] == 0
    assert m["config"]["lora_rank"] == 64 and m["config"]["max_samples"] == 48
    assert m["config"]["output_dir"] == str(out) and m["config"]["template"] == "qwen"
    assert m["command"][:3] == [".venv/bin/llamafactory-cli", "train", CONFIG]
    rev = m["git"]["revision"]
    assert rev is None or len(rev) == 40
    for name in ("cluener_train", "cluener_val"):
        assert m["datasets"][name]["sha256"] == file_sha256(converted_data_dir / f"{name}.json")
    assert m["packages"]["llamafactory"] == "0.9.5" and m["packages"]["peft"] and m["packages"]["torch"]
    assert m["started"] <= m["ended"] and m["duration_s"] > 0
    assert math.isfinite(m["results"]["train_loss"]) and math.isfinite(m["results"]["eval_loss"])
    assert m["results"]["global_step"] == 6  # 48 samples, batch 8, one epoch
    assert m["base_model"] == {"path": str(tiny_base_dir), "weights_fingerprint": weights_fingerprint(tiny_base_dir)}
    # bf16 autocast where this CPU has native bf16, else make train's fp32 fallback, recorded as an override
    native = gpu.cpu_native_bf16()
    assert m["config"]["bf16"] is native and ("bf16=false" in m["overrides"]) is not native
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:  # trained in bf16, saved in fp32
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}  # noqa: SIM118 (not iterable)


@pytest.mark.parametrize(
    "cfg, native, expected",
    [
        ({"use_cpu": True, "bf16": True}, False, ["bf16=false"]),
        ({"use_cpu": True, "bf16": True}, True, []),
        ({"use_cpu": "true", "bf16": "true"}, False, ["bf16=false"]),  # as key=value overrides give them
        ({"use_cpu": True, "bf16": False}, False, []),
        ({"bf16": True}, False, []),  # a GPU config: bf16 is the GPU's business
    ],
)
def test_precision_overrides(cfg, native, expected):
    assert train.precision_overrides(cfg, native_bf16=native) == expected


@pytest.mark.slow
def test_adapter_loads_in_peft_and_changes_the_logits(tiny_cluener_adapter: Path, tiny_base_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    before = logits(base, tok)
    tuned = PeftModel.from_pretrained(base, tiny_cluener_adapter).eval()
    after = logits(tuned, tok)
    assert before.shape == after.shape
    assert (after - before).abs().max().item() > 1e-2
    with tuned.disable_adapter():
        torch.testing.assert_close(logits(tuned, tok), before)


@pytest.mark.slow
def test_export_matches_base_plus_adapter(tiny_cluener_adapter: Path, tiny_base_dir: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert export.main([str(tiny_cluener_adapter), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / export.EXPORT_YAML).is_file()
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval(),
                                          tiny_cluener_adapter).eval()
    torch.testing.assert_close(logits(merged, tok), logits(reference, tok), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_export_config_from_the_adapter(tiny_cluener_adapter: Path, tiny_base_dir: Path, capsys):
    assert export.main([str(tiny_cluener_adapter), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"model_name_or_path: {tiny_base_dir}" in out and "template: qwen" in out
    assert f"export_dir: {tiny_cluener_adapter}-merged" in out and "finetuning_type: lora" in out


def test_export_of_a_folder_without_adapter(tmp_path: Path, capsys):
    assert export.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"export: `{tmp_path}` holds no `adapter_config.json`; pass the `output_dir` of a LoRA run" in err


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_latest_checkpoint(tmp_path: Path, tiny_base_dir: Path,
                                                             converted_data_dir: Path):
    out = tmp_path / "run"
    common = [CONFIG, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}", f"output_dir={out}",
              "max_samples=48", "per_device_train_batch_size=2", "save_strategy=steps", "save_steps=2",
              "logging_steps=1", "do_eval=false", "plot_loss=false", "report_to=none", "--no-check"]
    # 1. A long run, killed (SIGKILL to its own process group) once it has written checkpoint-4.
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train.launch", *common, "max_steps=400"], cwd=ROOT,
                            env=train_environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (out / "checkpoint-4" / "trainer_state.json").is_file():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint-4 within 10 minutes"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "adapter_model.safetensors").exists(), "the first run was not interrupted"
    latest = train.latest_checkpoint(out)
    killed_at = int(latest.name.split("-")[1])
    assert killed_at >= 4
    before = json.loads((latest / "trainer_state.json").read_text())["log_history"]

    # 2. RESUME=1 continues from there to a few steps further.
    target = killed_at + 4
    rc = train.main([*common, f"max_steps={target}"], environ=train_environ(RESUME="1"))
    assert rc == 0
    manifest = json.loads((out / TRAIN_MANIFEST).read_text())
    assert manifest["resumed_from"] == str(latest)  # (relative to the repository root when it lies inside)
    assert manifest["config"]["resume_from_checkpoint"] == manifest["resumed_from"]
    assert manifest["command"][-2:] == [f"resume_from_checkpoint={manifest['resumed_from']}",
                                        "overwrite_output_dir=false"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == target
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == list(range(1, target + 1))  # no step twice: the resumed run started after `killed_at`
    # the steps before the interruption are the first run's, carried over from the checkpoint unchanged
    assert [h for h in state["log_history"] if "loss" in h and h["step"] <= killed_at] == \
           [h for h in before if "loss" in h]
    assert (out / "adapter_model.safetensors").is_file()
    # the manifest's train_loss is the mean of every logged step (logging_steps=1 here), not the Trainer's figure,
    # which after a resume divides the resumed steps' loss by all the run's steps
    logged = [h["loss"] for h in state["log_history"] if "loss" in h]
    res = manifest["results"]
    assert res["train_loss"] == pytest.approx(sum(logged) / len(logged))
    assert res["trainer_train_loss"] < res["train_loss"]


def test_logged_mean_loss_weights_each_logged_loss_by_its_steps():
    history = [{"loss": 3.0, "step": 4}, {"eval_loss": 9.0, "step": 4}, {"loss": 1.0, "step": 8},
               {"loss": 2.0, "step": 10}, {"train_loss": 0.5, "step": 10}]
    assert manifest.logged_mean_loss(history) == pytest.approx((3.0 * 4 + 1.0 * 4 + 2.0 * 2) / 10)
    assert manifest.logged_mean_loss([{"eval_loss": 1.0, "step": 2}]) is None


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path: Path, capsys, tiny_base_dir, converted_data_dir):
    rc = train.main([CONFIG, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                     f"output_dir={tmp_path}", "save_strategy='no'", "--no-check"], environ=train_environ(RESUME="1"))
    assert rc == 1
    assert (f"train: `RESUME=1` but `{tmp_path}` holds no `checkpoint-N` (the config saves none: "
            "`save_strategy: no`; set `save_strategy=steps save_steps=N`); run without RESUME to start over."
            in capsys.readouterr().err)


def test_a_bad_config_launches_nothing(tmp_path: Path, capsys, tiny_base_dir, converted_data_dir):
    rc = train.main([CONFIG, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                     f"output_dir={tmp_path / 'x'}", "lora_rank=1024"], environ=train_environ())
    assert rc == 1
    err = capsys.readouterr().err
    assert "`lora_rank: 1024` is above vLLM's largest" in err and "train: not launched" in err
    assert not (tmp_path / "x").exists()


def test_sweep_names_and_grid():
    assert grid.fmt_lr(3e-3) == "3e-3" and grid.fmt_lr(1e-4) == "1e-4" and grid.fmt_lr(2.5e-4) == "2.5e-4"
    runs = grid.grid("cluener", [8, 64], [1e-3], [100, 600], 2.0, "saves/sweep")
    assert [n for n, _ in runs] == ["cluener-r8-lr1e-3-n100", "cluener-r8-lr1e-3-n600", "cluener-r64-lr1e-3-n100",
                                    "cluener-r64-lr1e-3-n600"]
    assert runs[2][1] == ["lora_rank=64", "lora_alpha=128", "learning_rate=0.001", "max_samples=100",
                          "output_dir=saves/sweep/cluener-r64-lr1e-3-n100"]


@pytest.mark.slow
def test_sweep_trains_named_adapters_for_one_server(tmp_path: Path, capfd, tiny_base_dir, converted_data_dir):
    out = tmp_path / "sweep"
    from pipelines.run import sweep as run_sweep

    rc = run_sweep.main([CONFIG, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                         *QUICK_TRAIN, "max_samples=16", "report_to=none", "--ranks", "8,16", "--lrs", "3e-3",
                         "--samples", "16", "--out", str(out), "--no-eval"])
    text = capfd.readouterr().out
    assert rc == 0
    names = ["cluener-r8-lr3e-3-n16", "cluener-r16-lr3e-3-n16"]
    for name in names:
        assert json.loads((out / name / "adapter_config.json").read_text())["r"] == int(name.split("-")[1][1:])
        assert name in text
    snippet = (out / "cluener-serve.yaml").read_text()
    import yaml

    served = yaml.safe_load(snippet)
    assert served["model"] == str(tiny_base_dir) and served["max_lora_rank"] == 16
    assert list(served["adapters"]) == names and all(Path(p).is_dir() for p in served["adapters"].values())
    assert served["max_loras"] == 2
    # the vllm serve line comes from the one command builder, not from the snippet
    assert "python -m pipelines serve command" in snippet and "--lora-modules" not in snippet
