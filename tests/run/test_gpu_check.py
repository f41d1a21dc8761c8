"""`make gpu-check` without a GPU: the commands of its dry run are those of `make train`, `make serve` and
`make eval` (the same builders), missing packages make steps "not run", and a CPU machine is refused."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from pipelines.common.paths import ROOT, TINY_BASE, rel, resolve
from pipelines.run import gpu_check
from pipelines.serve.config import AdapterInfo, from_dict
from pipelines.serve.vllm_args import build_command
from pipelines.train.launch import build_launch

TINY = os.path.relpath(TINY_BASE, ROOT)
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root"}


def _steps(tmp_path, gpus=2, facts=None, model=TINY):
    return {s.name: s for s in gpu_check.plan(model, tmp_path / "gc", 8011, gpus, ENV, facts)}


def test_the_train_steps_are_make_trains_commands(tmp_path):
    steps = _steps(tmp_path)
    assert list(steps) == ["tiny-base", "data", "train", "torchrun", "deepspeed", "serve", "eval", "deploy"]
    out = rel(tmp_path / "gc")
    for name, env in (("train", {"CUDA_VISIBLE_DEVICES": "0"}), ("torchrun", {"NPROC_PER_NODE": "2"}),
                      ("deepspeed", {"NPROC_PER_NODE": "2", "DEEPSPEED": gpu_check.DS_CONFIG})):
        st = steps[name]
        assert st.argv[:5] == [*gpu_check.CLI, "train", "conf/tiny_lora_cluener.yaml"]  # what `make train` runs
        overrides = st.argv[5:]
        assert {"use_cpu=false", "bf16=true", f"model_name_or_path={TINY}", f"dataset_dir={out}/data",
                f"output_dir={out}/adapters/{name}"} == set(overrides)
        assert {k: v for k, v in st.env.items() if v} == env and st.needs == ("tiny-base", "data")
        cmd, lf_env = build_launch("conf/tiny_lora_cluener.yaml", overrides, {**ENV, **st.env})
        assert st.shown[0].endswith(gpu_check._fmt(cmd))  # the launcher's own builder
        assert (lf_env.get("FORCE_TORCHRUN") == "1") is (name != "train")
        assert lf_env["PATH"].split(":")[0] == str(ROOT / ".venv" / "bin")  # where torchrun is found
        assert st.shown[0].split()[st.shown[0].split().index(".venv/bin/llamafactory-cli") + 1] == "train"
    assert "FORCE_TORCHRUN" not in steps["train"].shown[0] and "NPROC_PER_NODE" not in steps["train"].shown[0]
    assert steps["torchrun"].shown[0].startswith("NPROC_PER_NODE=2 FORCE_TORCHRUN=1 ")
    assert steps["deepspeed"].shown[0].endswith(f"deepspeed={gpu_check.DS_CONFIG}")
    assert (ROOT / gpu_check.DS_CONFIG).is_file()
    ds = json.loads((ROOT / gpu_check.DS_CONFIG).read_text())
    assert ds["zero_optimization"]["stage"] == 2


def test_the_serve_eval_and_deploy_steps(tmp_path):
    steps = _steps(tmp_path)
    out = rel(tmp_path / "gc")
    serve = steps["serve"]
    assert serve.argv == [*gpu_check.CLI, "serve", "start", f"{out}/serve.yaml", "--port", "8011"]
    raw = gpu_check.serve_config(TINY, f"{out}/adapters/train", 8011)
    assert raw["adapters"] == {"cluener": f"{out}/adapters/train"} and raw["dtype"] == "bfloat16"
    assert raw["max_model_len"] == 1024 and raw["served_model_name"] == gpu_check.BASE_NAME
    cmd = build_command(from_dict(raw), [AdapterInfo("cluener", resolve(f"{out}/adapters/train"), 64, TINY)])
    assert serve.shown == [gpu_check._fmt(cmd)]  # `make serve`'s builder
    words = shlex.split(serve.shown[0])
    assert words[:2] == [".venv-vllm/bin/vllm", "serve"] and "--enable-lora" in words
    lora = json.loads(words[words.index("--lora-modules") + 1])
    assert lora["name"] == "cluener" and lora["path"] == f"{out}/adapters/train"
    assert words[words.index("--max-lora-rank") + 1] == "64"
    ev = steps["eval"].argv
    assert ev[ev.index("--constrain") + 1] == "both" and steps["eval"].needs == ("serve",)
    assert ev[ev.index("--data") + 1] == f"{out}/data/cluener_val.json"
    dep = steps["deploy"].argv
    assert dep[3:] == ["deploy", f"{out}/serve.yaml", "--target", "compose", "--out", f"{out}/deploy"]


def test_the_eval_step_is_the_makefiles_eval_line(tmp_path):
    ev = _steps(tmp_path)["eval"].argv
    value = {flag: ev[ev.index(flag) + 1] for flag in ("--base-url", "--task", "--data", "--out", "--tokenizer")}
    make = subprocess.run(["make", "-n", "--no-print-directory", "eval", f"BASE_URL={value['--base-url']}",
                           f"TASK={value['--task']}", f"EVAL_DATA={value['--data']}", f"EVAL_OUT={value['--out']}",
                           f"MODELS={gpu_check.BASE_NAME} cluener", f"MODEL={value['--tokenizer']}",
                           "CONSTRAIN=both", "EVAL_ARGS=--fresh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert make.returncode == 0, make.stderr
    assert shlex.split(make.stdout.replace("\\\n", " "))[1:] == ev[1:]  # the same arguments after the interpreter


def test_a_real_model_uses_its_sized_config_briefly(tmp_path):
    steps = _steps(tmp_path, model="Qwen/Qwen2.5-7B-Instruct")
    assert "tiny-base" not in steps and steps["train"].needs == ("data",)
    assert steps["train"].argv[4] == "conf/qwen2.5-7b-instruct_lora_cluener.yaml"
    assert {"max_samples=200", "num_train_epochs=1", "bf16=true"} <= set(steps["train"].argv)
    assert "HF_HUB_OFFLINE" not in steps["train"].shown[0]


def test_missing_packages_and_one_gpu_are_not_run_with_the_reason(tmp_path):
    steps = _steps(tmp_path, gpus=1)
    assert steps["torchrun"].missing == gpu_check.ONE_GPU and steps["torchrun"].optional
    assert steps["train"].missing is None and steps["deepspeed"].missing is None
    facts = {"available": False, "why": "torch 2.13.0+cpu is a CPU build", "deepspeed": None, "vllm": False,
             "vllm_why": "vllm 0.32.0+cpu is the CPU build"}
    steps = _steps(tmp_path, facts=facts)
    for name in ("train", "torchrun", "deepspeed"):
        assert steps[name].missing == "no CUDA torch in .venv (torch 2.13.0+cpu is a CPU build)"
    assert "CPU build" in steps["serve"].missing
    steps = _steps(tmp_path, facts={"available": True, "deepspeed": None, "vllm": True})
    assert "no deepspeed" in steps["deepspeed"].missing and steps["train"].missing is None


def test_execute_never_passes_a_step_that_did_not_run(tmp_path, monkeypatch):
    ok = [sys.executable, "-c", "pass"]
    steps = [gpu_check.Step("data", "d", ok), gpu_check.Step("train", "t", ok, needs=("data",)),
             gpu_check.Step("torchrun", "r", ok, missing=gpu_check.ONE_GPU, optional=True),
             gpu_check.Step("deepspeed", "s", ok, missing="no deepspeed in .venv"),
             gpu_check.Step("serve", "v", [sys.executable, "-c", "raise SystemExit(3)"], needs=("train",)),
             gpu_check.Step("eval", "e", ok, needs=("serve",))]
    stops, real_run = [], subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: (
        stops.append(argv) if "stop" in argv else None) or real_run(argv, **kw))
    rows = gpu_check.execute(steps, tmp_path, 8011)
    got = {r["step"]: (r["ok"], r.get("reason")) for r in rows}
    assert got == {"data": ("yes", None), "train": ("yes", None),
                   "torchrun": ("not run", gpu_check.ONE_GPU), "deepspeed": ("not run", "no deepspeed in .venv"),
                   "serve": ("FAILED", None), "eval": ("not run", "needs `serve`, which failed")}
    assert not stops  # no server was started, none is stopped
    assert not gpu_check.passed(rows)
    assert gpu_check.passed([r for r in rows if r["step"] in ("data", "train", "torchrun")])
    table = gpu_check.table(rows)
    assert table.splitlines()[0] == "| step | seconds | figure | ok |"
    assert "| deepspeed (s) | – |  | not run: no deepspeed in .venv |" in table


def _cli(*args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "MODEL", "NPROC_PER_NODE")}
    return subprocess.run([sys.executable, "-m", "pipelines", "gpu-check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**environ, **env})


def test_a_cpu_machine_is_refused_in_one_sentence_and_the_dry_run_works_there(tmp_path):
    out = tmp_path / "gc"
    res = _cli("--out", str(out), PIPELINES_DEVICE="cpu")
    assert res.returncode == 1 and res.stdout == "" and not out.exists()
    assert res.stderr.count("\n") == 1 and "no CUDA GPU" in res.stderr and "--dry-run" in res.stderr
    dry = _cli("--out", str(out), PIPELINES_DEVICE="cpu", DRY_RUN="1")
    assert dry.returncode == 0, dry.stderr
    for name in ("tiny-base", "data", "train", "torchrun", "deepspeed", "serve", "eval", "deploy"):
        assert f"\n[{name}] " in dry.stdout, name
    assert "FORCE_TORCHRUN=1" in dry.stdout and "--enable-lora" in dry.stdout and "--constrain both" in dry.stdout
    assert "serve stop" in dry.stdout and not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize("target", ["gpu-check"])
def test_make_gpu_check_is_thin(target):
    res = subprocess.run(["make", "-n", "--no-print-directory", target, "ARGS=--port 8012"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "-m pipelines gpu-check '--port' '8012'" in res.stdout, res.stdout


def test_a_started_server_is_stopped_even_when_a_later_step_fails(tmp_path, monkeypatch):
    steps = [gpu_check.Step("serve", "v", [sys.executable, "-c", "pass"]),
             gpu_check.Step("eval", "e", [sys.executable, "-c", "raise SystemExit(1)"], needs=("serve",))]
    calls, real_run = [], subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv) or real_run(
        [sys.executable, "-c", "pass"] if "stop" in argv else argv, **kw))
    rows = gpu_check.execute(steps, tmp_path, 8011)
    assert [r["ok"] for r in rows] == ["yes", "FAILED"] and rows[1]["figure"] == "exit 1"
    assert calls[-1][-5:] == ["serve", "stop", str(tmp_path / "serve.yaml"), "--port", "8011"]
