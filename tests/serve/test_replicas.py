"""`replicas: N`: N vLLM servers behind vllm-router as one unit (start, status, stop, runtime adapters), the API
key, and failover: a replica SIGKILLed during an evaluation loses no request and changes no figure.

The slow tests share one topology (two replicas of the tiny base and an adapter, behind the router, with an API
key) started once for the module; the failover test kills a replica, and the last test stops what is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serving import START_TIMEOUT, make_lora_adapter

from pipelines import serve
from pipelines.common.net import free_port
from pipelines.common.paths import VENV_VLLM
from pipelines.serve import manage as serve_cli
from pipelines.serve.client import ServeError
from pipelines.serve.config import ROUTING_POLICIES, ServeConfigError, from_dict, load
from pipelines.serve.replicas import replica_configs, replica_devices
from pipelines.serve.router import router_args, router_command

API_KEY = "sk-router-" + secrets.token_hex(8)


def _raw(base: Path, port: int, **kw) -> dict:
    return {"model": str(base), "served_model_name": "tiny-base", "port": port, "max_model_len": 1024,
            "dtype": "float32", "cpu_kvcache_space": 1, **kw}


# ---------------------------------------------------------------- the config and the command lines (fast)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"replicas": 0}, "`replicas` in `t.yaml` is 0; set it to a positive integer."),
    ({"replicas": "two"}, "`replicas` in `t.yaml` is 'two'; set it to a positive integer."),
    ({"routing": "fastest"}, "`routing` in `t.yaml` is 'fastest'; set it to one of " + ", ".join(ROUTING_POLICIES) + "."),
])
def test_replica_keys_are_checked(raw, expected):
    with pytest.raises(ServeConfigError) as e:
        from_dict({"model": "m", **raw}, source="t.yaml")
    assert e.value.problems == [expected]


def test_replicas_flag_overrides_the_config_and_is_checked(tmp_path, capsys):
    conf = tmp_path / "s.yaml"
    conf.write_text(yaml.safe_dump({"model": "m", "replicas": 3}))
    assert load(conf).replicas == 3 and load(conf, replicas=2).replicas == 2 and load(conf).routing == "cache_aware"
    assert serve_cli.main(["start", str(conf), "--replicas", "0"]) == 1
    assert capsys.readouterr().err.strip() == "serve start: REPLICAS (`--replicas`) is 0; set it to a positive integer."


def test_replicas_split_the_cpu_threads_and_listen_on_loopback():
    cfg = from_dict({"model": "m", "replicas": 2, "host": "0.0.0.0", "cpu_threads": 5}, source="t.yaml")
    reps = replica_configs(cfg, {"PIPELINES_DEVICE": "cpu"}, ports=[9001, 9002])
    assert [(r.host, r.port, r.replicas, r.cpu_threads) for r in reps] == [("127.0.0.1", 9001, 1, 2),
                                                                          ("127.0.0.1", 9002, 1, 2)]
    one = from_dict({"model": "m", "replicas": 4}, source="t.yaml")
    assert all(r.cpu_threads == 1 for r in replica_configs(one, {"PIPELINES_DEVICE": "cpu", "OMP_NUM_THREADS": "2"}))


def test_replicas_on_gpus_get_gpus_of_their_own():
    listing = "\n".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i})" for i in range(4))
    two = from_dict({"model": "m", "replicas": 2}, source="t.yaml")
    assert replica_devices(two, {}, listing) == ["0", "1"]
    assert replica_devices(two, {"CUDA_VISIBLE_DEVICES": "3,1"}, listing) == ["3", "1"]
    tp = from_dict({"model": "m", "replicas": 2, "tensor_parallel_size": 2}, source="t.yaml")
    assert replica_devices(tp, {}, listing) == ["0,1", "2,3"]
    with pytest.raises(ServeError) as e:
        replica_devices(tp, {"CUDA_VISIBLE_DEVICES": "0,1,2"}, listing)
    assert str(e.value) == ("`replicas: 2` in `t.yaml` needs 4 GPUs (2 each) but 3 are visible; lower `replicas` (or "
                            "`REPLICAS=`) or make more GPUs visible (CUDA_VISIBLE_DEVICES).")
    assert replica_devices(two, {"PIPELINES_DEVICE": "cpu"}) is None  # the CPU: the threads split instead


def test_router_command_keeps_the_key_off_its_command_line():
    cfg = from_dict({"model": "m", "replicas": 2, "routing": "round_robin", "port": 8123}, source="t.yaml")
    args = router_args(cfg, ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert args[:8] == ["--host", "127.0.0.1", "--port", "8123", "--worker-urls", "http://127.0.0.1:1",
                        "http://127.0.0.1:2", "--policy"] and args[8] == "round_robin"


def test_the_router_gets_the_key_from_the_environment_not_its_command_line(tmp_path):
    """The launch line run for real, with vllm_router's entry point replaced by one that prints its argv."""
    stub = tmp_path / "vllm_router"
    stub.mkdir()
    (stub / "__init__.py").write_text("")
    (stub / "launch_router.py").write_text("import json, sys\ndef main():\n    print(json.dumps(sys.argv[1:]))\n"
                                           "    return 0\n")
    cfg = from_dict({"model": "m", "replicas": 2, "port": 8123}, source="t.yaml")
    cmd = router_command(cfg, ["http://127.0.0.1:1"], python=sys.executable)
    assert API_KEY not in " ".join(cmd)
    for key, tail in ((API_KEY, ["--api-key", API_KEY]), (None, [])):
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path), **({"VLLM_API_KEY": key} if key else {})}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
        argv = json.loads(out.stdout)
        assert argv[:len(cmd) - 3] == cmd[3:] and argv[len(cmd) - 3:] == tail


# ---------------------------------------------------------------- the real topology (slow)


@pytest.fixture(scope="module")
def topology(tmp_path_factory, tiny_base_dir: Path, converted_data_dir: Path):
    if not (VENV_VLLM / "bin" / "vllm-router").exists():
        pytest.fail(f"`{VENV_VLLM}` has no vllm-router: run `make setup` (`make test` runs it first).")
    root = tmp_path_factory.mktemp("replicas")
    cluener = make_lora_adapter(tiny_base_dir, root / "cluener", r=8, seed=1)
    extra = make_lora_adapter(tiny_base_dir, root / "extra", r=8, seed=3)
    conf = root / "serve.yaml"
    conf.write_text(yaml.safe_dump(_raw(tiny_base_dir, free_port(), replicas=2, runtime_lora_updating=True,
                                        adapters={"cluener": str(cluener)})))
    cfg, run_dir = load(conf), root / "run"
    env = {**os.environ, "VLLM_API_KEY": API_KEY}
    served = serve.start(cfg, run_dir=run_dir, env=env, timeout=START_TIMEOUT)
    try:
        yield {"cfg": cfg, "conf": conf, "run_dir": run_dir, "env": env, "served": served, "extra": extra,
               "data": converted_data_dir / "cluener_val.json", "root": root}
    finally:
        serve.stop(cfg.port, run_dir, grace=5)


def _cli(topo, *args: str) -> list[str]:
    return [*args[:1], str(topo["conf"]), "--run-dir", str(topo["run_dir"]), *args[1:]]


def _status(topo, monkeypatch, capsys) -> tuple[int, dict]:
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    rc = serve_cli.main(_cli(topo, "status", "--json"))
    return rc, json.loads(capsys.readouterr().out)


def _models(url: str) -> list[str]:
    r = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    r.raise_for_status()
    return sorted(m["id"] for m in r.json()["data"])


@pytest.mark.slow
def test_start_serves_every_name_through_the_router_and_each_replica(topology, monkeypatch, capsys):
    assert sorted(topology["served"].models) == ["cluener", "tiny-base"]
    rc, st = _status(topology, monkeypatch, capsys)
    assert rc == 0 and st["router"] == {"pid": topology["served"].pid, "url": topology["served"].base_url}
    assert len(st["replicas"]) == 2 and all(r["alive"] for r in st["replicas"])
    assert len({r["url"] for r in st["replicas"]} | {st["router"]["url"]}) == 3
    for url in [st["router"]["url"], *(r["url"] for r in st["replicas"])]:
        assert url.startswith("http://127.0.0.1:") and _models(url) == ["cluener", "tiny-base"]
    assert serve_cli.main(_cli(topology, "status")) == 0
    assert "before 2 replicas" in capsys.readouterr().out


@pytest.mark.slow
def test_the_key_is_required_through_the_router_and_never_written(topology):
    url = topology["served"].base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.get(f"{url}/models", headers=headers, timeout=30).status_code == 401
        assert httpx.post(f"{url}/completions", json={"model": "tiny-base", "prompt": "hi", "max_tokens": 2},
                          headers=headers, timeout=30).status_code == 401
    ok = httpx.post(f"{url}/completions", json={"model": "cluener", "prompt": "hi", "max_tokens": 2},
                    headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    state = json.loads(serve.run_files(topology["cfg"].port, topology["run_dir"]).state.read_text())
    for m in (state, *state["replicas"]):  # the argv each was started with (the router retitles its process)
        assert m["command"] and API_KEY not in " ".join(m["command"])
        assert API_KEY not in Path(m["log"]).read_text(errors="replace")
    assert API_KEY not in json.dumps(state)


@pytest.mark.slow
def test_lora_load_and_unload_reach_every_replica(topology, monkeypatch, capsys):
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    assert serve_cli.main(_cli(topology, "load", "--name", "extra", "--path", str(topology["extra"]))) == 0
    urls = [r["base_url"] + "/v1" for r in serve.read_state(serve.run_files(topology["cfg"].port,
                                                                            topology["run_dir"]))["replicas"]]
    assert all("extra" in _models(u) for u in [*urls, topology["served"].base_url])
    assert serve_cli.main(_cli(topology, "unload", "--name", "extra")) == 0
    assert all("extra" not in _models(u) for u in urls)
    capsys.readouterr()


def _eval(topo, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", "eval", "--base-url", topo["served"].base_url, "--task", "cluener",
         "--data", str(topo["data"]), "--model", "cluener", "--out", str(out), "--limit", "64", "--concurrency", "4",
         "--max-tokens", "48", "--api-key-env", "VLLM_API_KEY", "--no-progress"],
        env=topo["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_a_replica_killed_mid_evaluation_loses_no_request_and_changes_no_figure(topology, monkeypatch, capsys):
    calm = _eval(topology, topology["root"] / "calm")
    assert calm.wait(timeout=600) == 0, calm.stdout.read() if calm.stdout else ""
    out = topology["root"] / "killed"
    run = _eval(topology, out)
    predictions = out / "cluener" / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while _lines(predictions) < 8 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, "the evaluation ended before a replica could be killed"
    state = serve.read_state(serve.run_files(topology["cfg"].port, topology["run_dir"]))
    victim = state["replicas"][0]
    os.killpg(victim["pgid"], signal.SIGKILL)
    killed_at = _lines(predictions)
    assert run.wait(timeout=600) == 0, run.stdout.read() if run.stdout else ""
    assert killed_at < 64 and _lines(predictions) == 64 == _lines(topology["root"] / "calm" / "cluener" /
                                                                   "predictions.jsonl")
    figures = [json.loads((d / "metrics.json").read_text())["models"] for d in (topology["root"] / "calm", out)]
    assert figures[0] == figures[1]
    rc, st = _status(topology, monkeypatch, capsys)
    assert rc == 1 and [r["alive"] for r in st["replicas"]] == [False, True]
    assert st["replicas"][0]["pid"] == victim["pid"]
    assert serve_cli.main(_cli(topology, "status")) == 1
    assert f"replica pid {victim['pid']} on {victim['base_url']}/v1 is dead" in capsys.readouterr().out


@pytest.mark.slow
def test_stop_ends_the_router_and_every_replica(topology, capsys):
    """Runs last: it stops the shared topology (the fixture's own stop then finds nothing)."""
    files = serve.run_files(topology["cfg"].port, topology["run_dir"])
    state = serve.read_state(files)
    pgids = [m["pgid"] for m in (state, *state["replicas"])]
    assert serve_cli.main(_cli(topology, "stop")) == 0
    assert f"stopped the server on port {topology['cfg'].port} (pid {state['pid']})" in capsys.readouterr().out
    assert all(serve.group_members(g) == [] for g in pgids)
    assert not files.pid.exists() and not files.state.exists()


def test_runtime_adapters_are_refused_while_a_replica_is_dead():
    from pipelines.serve.process import _adapter_urls, start_time

    gone = subprocess.Popen(["true"])
    gone.wait()
    me = {"pid": os.getpid(), "start_time": start_time(os.getpid()), "base_url": "http://127.0.0.1:2"}
    state = {**me, "base_url": "http://127.0.0.1:1", "replicas": [me, {"pid": gone.pid, "start_time": "1",
                                                                      "base_url": "http://127.0.0.1:3"}]}
    with pytest.raises(serve.ServeError, match=r"the replica at http://127.0.0\.1:3 of the server on "
                                                r"http://127\.0\.0\.1:1 is gone"):
        _adapter_urls(state)
    assert _adapter_urls({**state, "replicas": [me]}) == ["http://127.0.0.1:2"]
    assert _adapter_urls(me) == ["http://127.0.0.1:2"]


def test_an_adapter_that_one_replica_refuses_is_unloaded_from_the_others(monkeypatch, tmp_path):
    """Every replica or none: the load that failed on the second replica is undone on the first, then said."""
    from types import SimpleNamespace

    from pipelines.serve import process

    me = {"pid": os.getpid(), "start_time": process.start_time(os.getpid())}
    state = {**me, "base_url": "http://127.0.0.1:1", "replicas": [{**me, "base_url": "http://127.0.0.1:2"},
                                                                  {**me, "base_url": "http://127.0.0.1:3"}]}
    calls: list[tuple[str, str]] = []

    def post(url, body, env):
        calls.append((url.rsplit("/", 1)[-1], url.split("/v1")[0]))
        if calls[-1] == ("load_lora_adapter", "http://127.0.0.1:3"):
            raise serve.ServeError("load_lora_adapter failed (400): no room for another adapter")
        return "ok"

    monkeypatch.setattr(process, "_runtime_state", lambda cfg, run_dir: state)
    monkeypatch.setattr(process, "inspect_adapter", lambda *a: (SimpleNamespace(path=tmp_path), []))
    monkeypatch.setattr(process, "post", post)
    cfg = from_dict({"model": "m", "replicas": 2, "runtime_lora_updating": True}, source="t.yaml")
    with pytest.raises(serve.ServeError, match="no room for another adapter"):
        process.load_adapter(cfg, "extra", str(tmp_path), env={})
    assert calls == [("load_lora_adapter", "http://127.0.0.1:2"), ("load_lora_adapter", "http://127.0.0.1:3"),
                     ("unload_lora_adapter", "http://127.0.0.1:2")]


def test_command_prints_the_router_before_one_replica(tiny_base_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINES_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    conf = tmp_path / "s.yaml"
    conf.write_text(yaml.safe_dump(_raw(tiny_base_dir, 8123, replicas=2)))
    assert serve_cli.main(["command", str(conf)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# 2 replicas") and "--port 8123 --worker-urls http://127.0.0.1:" in lines[1]
    assert "export OMP_NUM_THREADS=2" in lines and "--host 127.0.0.1" in lines[-1] and "--port 8123" not in lines[-1]
