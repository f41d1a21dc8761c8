"""The server as a process: start `vllm serve` in the background, know whether it runs, stop all of it.

Each server started on a port keeps `.serve/<port>/` (PID file, state, log). The state follows the server's
process group, so what is left of a server (vLLM's engine and workers) is found and stopped even when its
main process is gone. Runtime adapter loading (`make lora-load`/`lora-unload`) goes through the same state.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipelines.common.paths import ROOT
from pipelines.serve.client import ServeError, healthy, post, served_models
from pipelines.serve.command import build_command, build_env, shown_env
from pipelines.serve.config import ServeConfig, ServeConfigError, inspect_adapter, precheck

#: Where each server keeps its PID file, state and log: `.serve/<port>/`.
RUN_DIR = ROOT / ".serve"
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL = 30  # log lines shown when a start fails


# ---------------------------------------------------------------- run folder and processes


@dataclass
class RunFiles:
    dir: Path

    @property
    def pid(self) -> Path:
        return self.dir / "server.pid"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def state(self) -> Path:
        return self.dir / "state.json"


def run_files(port: int, run_dir: Path = RUN_DIR) -> RunFiles:
    return RunFiles(Path(run_dir) / str(port))


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgrp [2], starttime [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, from /proc; falls back to killpg(pgid, 0)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def _reap(pid: int) -> None:
    """Collect `pid` if it is our child (when the launcher runs inside a test), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def read_state(files: RunFiles) -> dict | None:
    """The state of the server started on this port, or None (and stale files removed) if it is gone."""
    if not files.state.exists():
        return None
    try:
        state = json.loads(files.state.read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    pid = state.get("pid")
    if not pid or start_time(pid) != state.get("start_time") or not group_members(state.get("pgid", pid)):
        _cleanup(files)
        return None
    return state


def _cleanup(files: RunFiles) -> None:
    for f in (files.pid, files.state):
        f.unlink(missing_ok=True)


def kill_group(pgid: int, grace: float = STOP_GRACE, pid: int | None = None) -> bool:
    """SIGTERM the group, SIGKILL after `grace` s; True when no process of it is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if pid:
                _reap(pid)
            if not group_members(pgid):
                return True
            time.sleep(0.2)
    return not group_members(pgid)


# ---------------------------------------------------------------- failure causes

_EXC = re.compile(r"(?:^|\s)((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit)): (.+?)\s*$")
_GENERIC = ("Engine core initialization failed", "See root cause above", "Worker failed", "Worker proc",
            "Engine process failed to start", "died unexpectedly", "Traceback")


def failure_cause(log_text: str, returncode: int | None = None) -> str:
    """One sentence: why a server exited, from its log (the most specific exception message)."""
    causes = []
    for line in log_text.splitlines():
        m = None if "WARNING" in line else _EXC.search(line)
        if m and not any(g in m.group(2) for g in _GENERIC):
            causes.append(m.group(2).strip())
    if causes:
        cause = causes[-1]
    elif returncode is not None and returncode < 0:
        cause = f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    else:
        errors = [ln.split("ERROR", 1)[1].split("]", 1)[-1].strip(" :") for ln in log_text.splitlines()
                  if "ERROR" in ln]
        cause = errors[-1] if errors else f"exit code {returncode}"
    return cause if cause.endswith((".", "!", "?", ")")) else cause + "."


def log_tail(path: Path, n: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- start / status / stop


@dataclass
class Served:
    pid: int
    base_url: str
    models: list[str]
    log: Path
    seconds: float


def start(cfg: ServeConfig, *, run_dir: Path = RUN_DIR, env: Mapping[str, str] | None = None,
          timeout: float | None = None, vllm: str | Path | None = None,
          echo: Callable[[str], None] = print) -> Served:
    """Check, start `vllm serve` in the background, wait until it lists the base and every adapter.

    Raises ServeConfigError (every precheck problem) or ServeError ("server exited: …" / "server failed to
    start in time …"); on a failure the server's process group is stopped and the log's tail printed.
    """
    files = run_files(cfg.port, run_dir)
    state = read_state(files)
    if state:
        raise ServeError(f"a server is already running on port {cfg.port} (pid {state['pid']}); stop it with "
                         f"`make serve-stop PORT={cfg.port}` first.")
    adapters = precheck(cfg)
    base_env = os.environ if env is None else env
    server_env = build_env(cfg, base_env)
    cmd = build_command(cfg, adapters, vllm)
    exe = Path(cmd[0])
    if not exe.exists():
        raise ServeError(f"`{exe}` does not exist; build the vLLM venv with `make setup`.")
    files.dir.mkdir(parents=True, exist_ok=True)
    echo("serve: " + " ".join(f"{k}={v}" for k, v in sorted(shown_env(server_env, base_env).items())))
    echo("serve: " + shlex.join(cmd))
    t0 = time.monotonic()
    with open(files.log, "wb") as log:
        # Its own process group (stopped as a whole; Ctrl-C at the terminal does not reach it) but the caller's
        # session: with the kernel's autogroup scheduling a new session is a CPU group of its own, and on a
        # 2-core machine the engine's spin-waiting then starved the API server: 9-13 prompts/s instead of 25
        # at concurrency 16 (BENCHMARKS.md).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=server_env, cwd=ROOT, process_group=0)
    files.pid.write_text(f"{proc.pid}\n")
    base_url = f"http://{_url_host(cfg.host)}:{cfg.port}"
    state = {"pid": proc.pid, "pgid": proc.pid, "start_time": start_time(proc.pid), "config": cfg.source,
             "base_url": base_url, "model": cfg.served_model_name, "adapters": [a.name for a in adapters],
             "runtime_lora_updating": cfg.runtime_lora_updating, "command": cmd, "log": str(files.log)}
    if cfg.lora_enabled:
        state["max_lora_rank"] = _flag_value(cmd, "--max-lora-rank", int)
    files.state.write_text(json.dumps(state, indent=2) + "\n")
    echo(f"serve: started pid {proc.pid}, log {files.log}; waiting for {base_url}/v1/models …")
    want = [cfg.served_model_name, *state["adapters"]]
    try:
        models = _wait_ready(proc, base_url, want, server_env, timeout or cfg.startup_timeout, files.log)
    except BaseException as e:  # a failed start, or Ctrl-C while waiting: leave no server behind
        kill_group(proc.pid, grace=10.0, pid=proc.pid)
        _cleanup(files)
        if isinstance(e, ServeError):
            e.pid = proc.pid
            tail = log_tail(files.log)
            if tail:
                echo(f"serve: last lines of {files.log}:\n{tail}")
        raise
    seconds = time.monotonic() - t0
    state["ready_seconds"] = round(seconds, 1)
    files.state.write_text(json.dumps(state, indent=2) + "\n")
    return Served(proc.pid, base_url + "/v1", models, files.log, seconds)


def _url_host(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"[{host}]" if ":" in host else host


def _flag_value(cmd: list[str], flag: str, kind=str):
    value = None
    for i, a in enumerate(cmd):
        if a == flag and i + 1 < len(cmd):
            value = kind(cmd[i + 1])
        elif a.startswith(flag + "="):
            value = kind(a.split("=", 1)[1])
    return value


def _wait_ready(proc: subprocess.Popen, base_url: str, want: list[str], env: Mapping[str, str],
                timeout: float, log: Path) -> list[str]:
    deadline = time.monotonic() + timeout
    models: list[str] = []
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServeError(f"server exited: {failure_cause(log.read_text(errors='replace'), code)}")
        if healthy(base_url):
            try:
                models = served_models(base_url, env)
            except httpx.HTTPError:
                models = []
            if all(m in models for m in want):
                return models
        time.sleep(1.0)
    missing = [m for m in want if m not in models]
    what = f"/v1/models lacks {', '.join(missing)}" if models else "no healthy answer on /health"
    raise ServeError(f"server failed to start in time: {what} after {timeout:.0f} s; raise `startup_timeout` "
                     f"or read {log}.")


def status(port: int, run_dir: Path = RUN_DIR, env: Mapping[str, str] | None = None) -> dict:
    """What runs on `port`: {"running", "pid", "base_url", "healthy", "models", …}."""
    env = os.environ if env is None else env
    state = read_state(run_files(port, run_dir))
    if state is None:
        url = f"http://127.0.0.1:{port}"
        return {"running": False, "base_url": url, "healthy": healthy(url)}
    out = {"running": True, **{k: state.get(k) for k in ("pid", "base_url", "config", "model", "adapters", "log",
                                                            "runtime_lora_updating", "ready_seconds")}}
    out["healthy"] = healthy(state["base_url"])
    if out["healthy"]:
        try:
            out["models"] = served_models(state["base_url"], env)
        except httpx.HTTPError:
            out["healthy"] = False
    return out


def stop(port: int, run_dir: Path = RUN_DIR, grace: float = STOP_GRACE) -> int | None:
    """Stop the server started on `port` (its whole process group); its pid, or None if none ran."""
    files = run_files(port, run_dir)
    state = read_state(files)
    if state is None:
        return None
    pid = state["pid"]
    if not kill_group(state.get("pgid", pid), grace=grace, pid=pid):
        raise ServeError(f"processes of group {pid} survived SIGKILL; look at `ps -g {pid}`.")
    _cleanup(files)
    return pid


# ---------------------------------------------------------------- runtime adapters


def _runtime_state(cfg: ServeConfig, run_dir: Path) -> dict:
    if not cfg.runtime_lora_updating:
        raise ServeError(f"`runtime_lora_updating` is false in `{cfg.source}`; set it to true and restart the "
                         "server to load or unload adapters at runtime.")
    state = read_state(run_files(cfg.port, run_dir))
    if state is None:
        raise ServeError(f"no server of the launcher runs on port {cfg.port}; start one with `make serve`.")
    if not state.get("runtime_lora_updating"):
        raise ServeError(f"the server on port {cfg.port} was started without runtime LoRA updating; restart it "
                         "with `make serve-stop` and `make serve`.")
    return state


def load_adapter(cfg: ServeConfig, name: str, path: str, run_dir: Path = RUN_DIR,
                 env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    state = _runtime_state(cfg, run_dir)
    info, problems = inspect_adapter(name, path, cfg.model, state.get("max_lora_rank"))
    if problems:
        raise ServeConfigError(problems)
    assert info is not None
    post(f"{state['base_url']}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(info.path)}, env)


def unload_adapter(cfg: ServeConfig, name: str, run_dir: Path = RUN_DIR,
                   env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    state = _runtime_state(cfg, run_dir)
    post(f"{state['base_url']}/v1/unload_lora_adapter", {"lora_name": name}, env)
