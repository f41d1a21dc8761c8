"""`replicas: N` (N > 1): start N `vllm serve` processes on free loopback ports and vllm-router before them.

One unit for start, status and stop: `.serve/<port>/state.json` holds the router as the main process (its pid,
process group and URL at the top, as a single server's) and each replica's group under `replicas`, so that
status names a dead replica and stop ends every group (pipelines/serve/process.py reads and stops them all).
Start returns when every replica lists the base and every adapter, and so does the router.

On the CPU the threads split between the replicas: each gets `cpu_threads` (else OMP_NUM_THREADS, else the
usable cores) divided by N, at least one. On GPUs each replica gets `gpu_count` GPUs of its own
(CUDA_VISIBLE_DEVICES), as the deployment bundles give each service its devices. From the first replica's spawn on,
the state lists what started (`starting`: the launcher's pid), so `serve status` and `make serve-stop` find the
replicas while they load, and a second `make serve` on the port is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from pipelines.common.device import has_cuda, usable_cores, visible_gpus
from pipelines.common.io import atomic_write
from pipelines.common.net import free_port
from pipelines.common.process import start_time
from pipelines.serve.client import ServeError
from pipelines.serve.config import ServeConfig, precheck
from pipelines.serve.process import (
    RUN_DIR,
    Served,
    fail_start,
    flag_value,
    member,
    record_group,
    refuse_running,
    run_files,
    spawn,
    start_server,
    url_host,
    wait_ready,
)
from pipelines.serve.router import router_command
from pipelines.serve.vllm_args import build_command, build_env, shown_env

REPLICA_HOST = "127.0.0.1"  # the replicas listen on loopback only; the router is what the config's host exposes


def replica_threads(cfg: ServeConfig, env: Mapping[str, str]) -> int:
    """The CPU threads of each replica: the server's threads divided between the replicas, at least one."""
    total = cfg.cpu_threads or int(env.get("OMP_NUM_THREADS") or 0) or usable_cores()
    return max(1, total // cfg.replicas)


def replica_configs(cfg: ServeConfig, env: Mapping[str, str], ports: list[int] | None = None) -> list[ServeConfig]:
    """The N single servers of `cfg`: its keys, a free loopback port each, the CPU threads split between them."""
    ports = ports or _free_ports(cfg.replicas)
    threads = None if has_cuda(env) else replica_threads(cfg, env)
    return [replace(cfg, host=REPLICA_HOST, port=p, replicas=1, cpu_threads=threads) for p in ports]


def replica_devices(cfg: ServeConfig, env: Mapping[str, str], listing: str | None = None) -> list[str] | None:
    """Each replica's CUDA_VISIBLE_DEVICES on a GPU machine: `gpu_count` GPUs of its own, in the order the
    environment shows them (None on the CPU). Too few visible GPUs is one sentence, before anything starts."""
    if listing is None and not has_cuda(env):
        return None
    shown = env.get("CUDA_VISIBLE_DEVICES")
    ids = ([d.strip() for d in shown.split(",") if d.strip() and d.strip() != "-1"] if shown is not None
           else [str(i) for i in range(visible_gpus(env, listing))])
    per, need = cfg.gpu_count, cfg.gpu_count * cfg.replicas
    if len(ids) < need:
        raise ServeError(f"`replicas: {cfg.replicas}` in `{cfg.source}` needs {need} GPUs ({per} each) but "
                         f"{len(ids)} {'is' if len(ids) == 1 else 'are'} visible; lower `replicas` (or `REPLICAS=`) "
                         "or make more GPUs visible (CUDA_VISIBLE_DEVICES).")
    return [",".join(ids[i * per:(i + 1) * per]) for i in range(cfg.replicas)]


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port(REPLICA_HOST)
        if p not in ports:
            ports.append(p)
    return ports


def start(cfg: ServeConfig, *, run_dir: Path = RUN_DIR, env: Mapping[str, str] | None = None,
          timeout: float | None = None, vllm: str | Path | None = None, echo: Callable[[str], None] = print) -> Served:
    """`make serve`: one server (`replicas: 1`, process.start_server) or N behind the router (`start_replicas`)."""
    launch = start_replicas if cfg.replicas > 1 else start_server
    return launch(cfg, run_dir=run_dir, env=env, timeout=timeout, vllm=vllm, echo=echo)


def start_replicas(cfg: ServeConfig, *, run_dir: Path = RUN_DIR, env: Mapping[str, str] | None = None,
                   timeout: float | None = None, vllm: str | Path | None = None,
                   echo: Callable[[str], None] = print) -> Served:
    """Start the replicas, wait until each lists every name, then the router, and wait until it lists them too.

    A failure or Ctrl-C stops every group started and prints the logs' tails (process.fail_start)."""
    files = run_files(cfg.port, run_dir)
    refuse_running(files, cfg.port)
    adapters = precheck(cfg)  # the base, the adapters and the router's port
    base_env = os.environ if env is None else env
    want = [cfg.served_model_name, *(a.name for a in adapters)]
    limit = timeout or cfg.startup_timeout
    devices = replica_devices(cfg, base_env)
    files.dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{url_host(cfg.host)}:{cfg.port}"
    t0 = time.monotonic()
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    me = os.getpid()
    state: dict = {"starting": {"pid": me, "start_time": start_time(me)}, "base_url": url, "config": cfg.source,
                   "model": cfg.served_model_name, "adapters": [a.name for a in adapters],
                   "runtime_lora_updating": cfg.runtime_lora_updating, "routing": cfg.routing, "replicas": []}
    try:
        replicas = []
        for i, rcfg in enumerate(replica_configs(cfg, base_env)):
            renv = build_env(rcfg, base_env)
            if devices:
                renv["CUDA_VISIBLE_DEVICES"] = devices[i]
            cmd = build_command(rcfg, adapters, vllm)
            log = files.dir / f"replica-{i}.log"
            if i == 0:
                echo("serve: " + " ".join(f"{k}={v}" for k, v in sorted(shown_env(renv, base_env).items())))
            echo(f"serve: replica {i}{f' on GPU {devices[i]}' if devices else ''}: " + shlex.join(cmd))
            proc = spawn(cmd, renv, log)
            procs.append(proc)
            logs.append(log)
            replicas.append((proc, member(proc, f"http://{REPLICA_HOST}:{rcfg.port}", log, cmd), renv))
            state["replicas"] = [s for _, s, _ in replicas]  # found by status and stop while they start
            atomic_write(files.state, json.dumps(state, indent=2) + "\n")
        for proc, rstate, renv in replicas:  # they start side by side; each must list every name
            wait_ready(proc, rstate["base_url"], want, renv, max(1.0, limit - (time.monotonic() - t0)),
                       Path(rstate["log"]))
            record_group(rstate)
        cmd = router_command(cfg, [s["base_url"] for _, s, _ in replicas])
        echo("serve: router: " + shlex.join(cmd))
        proc = spawn(cmd, base_env, files.log)
        procs.insert(0, proc)
        logs.insert(0, files.log)
        files.pid.write_text(f"{proc.pid}\n")
        del state["starting"]
        state = {**member(proc, url, files.log, cmd), **state}
        if cfg.lora_enabled:
            state["max_lora_rank"] = flag_value(replicas[0][1]["command"], "--max-lora-rank", int)
        atomic_write(files.state, json.dumps(state, indent=2) + "\n")
        echo(f"serve: router pid {proc.pid} before {len(replicas)} replicas, log {files.log}; waiting for "
             f"{url}/v1/models …")
        models = wait_ready(proc, url, want, base_env, max(1.0, limit - (time.monotonic() - t0)), files.log)
        record_group(state)
    except BaseException as e:  # a failed start, or Ctrl-C while starting: leave no process behind
        fail_start(e, procs, files, logs, echo)
    seconds = time.monotonic() - t0
    state["ready_seconds"] = round(seconds, 1)
    atomic_write(files.state, json.dumps(state, indent=2) + "\n")
    return Served(proc.pid, url + "/v1", models, files.log, seconds)

