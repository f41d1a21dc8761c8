"""The server as a process: start `vllm serve` in the background, know whether it runs, stop all of it.

Each server started on a port keeps `.serve/<port>/` (PID file, state, log). The state follows the server's
process group, so what is left of a server (vLLM's engine and workers) is found and stopped even when its
main process is gone. Runtime adapter loading (`make lora-load`/`lora-unload`) goes through the same state.
Start, status, stop and the runtime adapters stay one module: they share the run folder's state and the one rule
that tells the server's processes from others (`server_group`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx

from pipelines.common.io import atomic_write
from pipelines.common.paths import ROOT
from pipelines.common.process import (
    QUICK_GRACE_S,
    STOP_GRACE_S,
    is_live,
    log_tail,
    start_time,
    stop_even_on_ctrl_c,
    term_then_kill,
)
from pipelines.common.process import proc_stat as _proc_stat
from pipelines.serve.client import ServeError, healthy, post, served_models
from pipelines.serve.config import ServeConfig, ServeConfigError, inspect_adapter, precheck
from pipelines.serve.vllm_args import build_command, build_env, shown_env

#: Where each server keeps its PID file, state and log: `.serve/<port>/`.
RUN_DIR = ROOT / ".serve"
STOP_GRACE = STOP_GRACE_S  # seconds between SIGTERM and SIGKILL (pipelines.common.process)


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
            if stat and is_live(stat) and stat[2] == str(pgid):
                pids.append(int(entry.name))
    return pids


def _reap(pid: int) -> None:
    """Collect `pid` if it is our child (when the launcher runs inside a test), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def server_group(state: Mapping) -> list[int]:
    """Live processes of the server recorded in `state`: its process group, guarded against pid reuse.

    A process is the server's when its process-group id is the recorded `pgid` and it started no earlier than
    the server's main process (children start after their parent; /proc start times are clock ticks since
    boot) or it is one of the `group` recorded at start, (pid, start time) pairs. The kernel keeps a group's id
    from being handed out again while any member lives, so the id can only have been reused once every member
    is gone: then a process with pid == pgid that leads group `pgid` but started at another time than the
    recorded main process is the leader of another group, and the server is gone. What this cannot tell apart is
    a newer group of that id whose own leader has exited too, leaving processes started after the server: that
    takes the pid to be reused by a process that leads a group and dies before its children.
    """
    pid = state.get("pid")
    pgid = state.get("pgid", pid)
    if not pgid:
        return []
    born = state.get("start_time")
    leader = _proc_stat(pgid)
    if leader and leader[2] == str(pgid) and born is not None and leader[19] != born:
        return []  # the group id belongs to a newer group now
    known = {(int(p), str(t)) for p, t in state.get("group") or []}
    members = []
    for member in group_members(pgid):
        stat = _proc_stat(member)
        if not stat:
            continue
        ours = (member, stat[19]) in known or (born is not None and int(stat[19]) >= int(born))
        if ours or (born is None and member == pid):
            members.append(member)
    return sorted(members)


def main_alive(state: Mapping) -> bool:
    """Does the server's main process (the API server, the group's leader) still run?"""
    pid = state.get("pid")
    stat = _proc_stat(pid) if pid else None
    if not stat:
        return False
    return stat[0] not in ("Z", "X") and stat[19] == state.get("start_time")


def read_state(files: RunFiles) -> dict | None:
    """The state of the server started on this port while any process of its group lives, else None (and the
    PID file and state removed). `alive`: the group's live pids; `main_alive`: whether the main process is one."""
    if not files.state.exists():
        return None
    try:
        state = json.loads(files.state.read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    alive = sorted(p for m in groups(state) for p in server_group(m)) if isinstance(state, dict) else []
    if not alive:
        _cleanup(files)
        return None
    state["alive"], state["main_alive"] = alive, main_alive(state)
    if state.get("pid"):
        _reap(state["pid"])  # a main process killed under a launcher that is its parent (tests, `running`)
    return state


def groups(state: Mapping) -> list[Mapping]:
    """The process groups of a started server: its own, or the router's and each replica's (`replicas` > 1)."""
    return [m for m in (state, *(state.get("replicas") or [])) if isinstance(m, Mapping) and m.get("pid")]


def leftovers(state: Mapping, port: int) -> str:
    """One sentence: the main process is gone but processes of its group still run (or, with replicas, the router
    is not started yet: `starting`, the launcher still waiting for the replicas or gone)."""
    pids = state.get("alive") or []
    listed = (f"pid{'s' if len(pids) != 1 else ''} {', '.join(map(str, pids))}")
    if state.get("starting"):
        launcher = state["starting"]
        if main_alive(launcher):  # the `make serve` that wrote it (its pid and start time) still waits
            return (f"the server on port {port} is starting: `make serve` (pid {launcher['pid']}) waits for its "
                    f"replicas ({listed}); wait for it, or end them with `make serve-stop PORT={port}`")
        return (f"the start of the server on port {port} was abandoned (its launcher, pid {launcher['pid']}, is "
                f"gone) but {len(pids)} process{'es' if len(pids) != 1 else ''} of its replicas still "
                f"run{'s' if len(pids) == 1 else ''} ({listed}); `make serve-stop PORT={port}` ends them")
    return (f"the main process {state.get('pid')} of the server on port {port} is gone, but {len(pids)} "
            f"process{'es' if len(pids) != 1 else ''} of its group still run{'s' if len(pids) == 1 else ''} "
            f"({listed}); `make serve-stop PORT={port}` ends them")


def _cleanup(files: RunFiles) -> None:
    for f in (files.pid, files.state):
        f.unlink(missing_ok=True)


def _group_signaller(pgid: int, pid: int | None) -> tuple[Callable[[int], None], Callable[[], bool]]:
    def send(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def alive() -> bool:
        if pid:
            _reap(pid)
        return bool(group_members(pgid))

    return send, alive


def kill_group(pgid: int, grace: float = STOP_GRACE, pid: int | None = None) -> bool:
    """SIGTERM the group, SIGKILL after `grace` s; True when no process of it is left."""
    return term_then_kill(*_group_signaller(pgid, pid), grace)


def _stop_started(pgid: int, pid: int) -> None:
    """Stop a server this launcher has just started; a second Ctrl-C skips the grace period, no more."""
    stop_even_on_ctrl_c(*_group_signaller(pgid, pid), QUICK_GRACE_S)


class ServeInterrupted(KeyboardInterrupt):
    """Ctrl-C during `start`: the server it had started (`pid`) is stopped, its `log` kept."""

    def __init__(self, pid: int, log: Path):
        super().__init__(f"interrupted; the server (pid {pid}) was stopped, its log kept at {log}")
        self.pid, self.log = pid, log


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


# ---------------------------------------------------------------- start / status / stop


@dataclass
class Served:
    pid: int
    base_url: str
    models: list[str]
    log: Path
    seconds: float


def refuse_running(files: RunFiles, port: int) -> None:
    """ServeError when a server (or what is left of one) of the launcher runs on `port`."""
    state = read_state(files)
    if state and state["main_alive"]:
        raise ServeError(f"a server is already running on port {port} (pid {state['pid']}); stop it with "
                         f"`make serve-stop PORT={port}` first.")
    if state and state.get("starting"):
        raise ServeError(leftovers(state, port) + " first.")
    if state:
        alive = state["alive"]
        raise ServeError(f"processes of a previous server on port {port} still run (pid{'s' if len(alive) > 1 else ''} "
                         f"{', '.join(map(str, alive))}; its main process {state['pid']} is gone); end them with "
                         f"`make serve-stop PORT={port}` first.")


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start `cmd` in the background in its own process group, its output into `log_path`."""
    exe = Path(cmd[0])
    if not exe.exists():
        raise ServeError(f"`{exe}` does not exist; build the vLLM venv with `make setup`.")
    with open(log_path, "wb") as log:
        # Its own process group (stopped as a whole; Ctrl-C at the terminal does not reach it) but the
        # caller's session: with the kernel's autogroup scheduling a new session is a CPU group of its own,
        # and on a 2-core machine the engine's spin-waiting then starved the API server: 9-13 prompts/s
        # instead of 25 at concurrency 16 (BENCHMARKS.md).
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=ROOT, process_group=0)


def member(proc: subprocess.Popen, url: str, log: Path, cmd: list[str]) -> dict:
    """The state of one started process group (a server, a replica, the router): what `server_group` reads."""
    return {"pid": proc.pid, "pgid": proc.pid, "start_time": start_time(proc.pid), "base_url": url,
            "command": cmd, "log": str(log)}


def record_group(state: dict) -> None:
    """What runs of a started group now (API server, engine core, workers), kept as (pid, start time) pairs."""
    state["group"] = [[p, start_time(p)] for p in group_members(state["pgid"])]


def fail_start(e: BaseException, procs: list[subprocess.Popen], files: RunFiles, logs: list[Path],
               echo: Callable[[str], None]) -> NoReturn:
    """After a failed start or Ctrl-C while starting: stop every group started, print the logs' tails, raise."""
    for proc in procs:
        _stop_started(proc.pid, proc.pid)
    _cleanup(files)
    if isinstance(e, ServeError) and procs:
        e.pid = procs[0].pid
        for path in logs:
            tail = log_tail(path)
            if tail:
                echo(f"serve: last lines of {path}:\n{tail}")
    if isinstance(e, KeyboardInterrupt) and procs:
        raise ServeInterrupted(procs[0].pid, logs[0]) from None
    raise e


def start_server(cfg: ServeConfig, *, run_dir: Path = RUN_DIR, env: Mapping[str, str] | None = None,
          timeout: float | None = None, vllm: str | Path | None = None,
          echo: Callable[[str], None] = print) -> Served:
    """Check, start `vllm serve` in the background, wait until it lists the base and every adapter (one server:
    `replicas` is not read here; `pipelines.serve.replicas.start` is the entry that reads it).

    Raises ServeConfigError (every precheck problem) or ServeError ("server exited: …" / "server failed to
    start in time …"); on a failure the server's process group is stopped and the log's tail printed.
    """
    files = run_files(cfg.port, run_dir)
    refuse_running(files, cfg.port)
    adapters = precheck(cfg)
    base_env = os.environ if env is None else env
    server_env = build_env(cfg, base_env)
    cmd = build_command(cfg, adapters, vllm)
    files.dir.mkdir(parents=True, exist_ok=True)
    echo("serve: " + " ".join(f"{k}={v}" for k, v in sorted(shown_env(server_env, base_env).items())))
    echo("serve: " + shlex.join(cmd))
    t0 = time.monotonic()
    procs: list[subprocess.Popen] = []
    try:
        proc = spawn(cmd, server_env, files.log)
        procs.append(proc)
        files.pid.write_text(f"{proc.pid}\n")
        base_url = f"http://{url_host(cfg.host)}:{cfg.port}"
        state = {**member(proc, base_url, files.log, cmd), "config": cfg.source, "model": cfg.served_model_name,
                 "adapters": [a.name for a in adapters], "runtime_lora_updating": cfg.runtime_lora_updating}
        if cfg.lora_enabled:
            state["max_lora_rank"] = flag_value(cmd, "--max-lora-rank", int)
        atomic_write(files.state, json.dumps(state, indent=2) + "\n")
        echo(f"serve: started pid {proc.pid}, log {files.log}; waiting for {base_url}/v1/models …")
        want = [cfg.served_model_name, *state["adapters"]]
        models = wait_ready(proc, base_url, want, server_env, timeout or cfg.startup_timeout, files.log)
        record_group(state)
    except BaseException as e:  # a failed start, or Ctrl-C while starting: leave no server behind
        fail_start(e, procs, files, [files.log], echo)
    seconds = time.monotonic() - t0
    state["ready_seconds"] = round(seconds, 1)
    atomic_write(files.state, json.dumps(state, indent=2) + "\n")
    return Served(proc.pid, base_url + "/v1", models, files.log, seconds)


def url_host(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"[{host}]" if ":" in host else host


def flag_value(cmd: list[str], flag: str, kind=str):
    """The value of `flag` in an argv (`--flag V` or `--flag=V`), the last one winning as in argparse; None if absent."""
    value = None
    for i, a in enumerate(cmd):
        if a == flag and i + 1 < len(cmd):
            value = kind(cmd[i + 1])
        elif a.startswith(flag + "="):
            value = kind(a.split("=", 1)[1])
    return value


def wait_ready(proc: subprocess.Popen, base_url: str, want: list[str], env: Mapping[str, str],
                timeout: float, log: Path) -> list[str]:
    """Poll until `base_url` answers /health and its /v1/models lists every name of `want`."""
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
    """What runs on `port`: {"running", "pid", "base_url", "healthy", "models", …}; with the main process gone
    but processes of its group left, {"running": False, "leftover": [pids], "message": …}."""
    env = os.environ if env is None else env
    state = read_state(run_files(port, run_dir))
    if state is None:
        url = f"http://127.0.0.1:{port}"
        return {"running": False, "base_url": url, "healthy": healthy(url)}
    if not state["main_alive"]:  # what is left of a server, or replicas whose router is not started yet
        return {"running": False, "leftover": state["alive"], "pid": state.get("pid"), "base_url": state["base_url"],
                "healthy": False, "log": state.get("log"), "starting": bool(state.get("starting")),
                "message": leftovers(state, port)}
    out = {"running": True, **{k: state.get(k) for k in ("pid", "base_url", "config", "model", "adapters", "log",
                                                            "runtime_lora_updating", "ready_seconds")}}
    if state.get("replicas"):  # the router's and each replica's process (pipelines/serve/replicas.py)
        out["router"] = {"pid": state["pid"], "url": state["base_url"] + "/v1"}
        out["replicas"] = [{"pid": r["pid"], "url": r["base_url"] + "/v1", "alive": main_alive(r)}
                           for r in state["replicas"]]
    out["healthy"] = healthy(state["base_url"])
    if out["healthy"]:
        try:
            out["models"] = served_models(state["base_url"], env)
        except httpx.HTTPError:
            out["healthy"] = False
    return out


def stop(port: int, run_dir: Path = RUN_DIR, grace: float = STOP_GRACE) -> int | None:
    """Stop the server started on `port`: whatever is left of its process group, with or without its main
    process; its pid, or None if nothing of it ran."""
    files = run_files(port, run_dir)
    state = read_state(files)
    if state is None:
        return None
    for m in groups(state):  # the router first: it stops taking requests before the replicas go
        if not server_group(m):  # gone already: its group id may be another program's by now
            continue
        pgid = m.get("pgid", m["pid"])
        if not kill_group(pgid, grace=grace, pid=m["pid"]):
            raise ServeError(f"processes of group {pgid} survived SIGKILL; look at `ps -g {pgid}`.")
    _cleanup(files)
    return state.get("pid") or state["alive"][0]


# ---------------------------------------------------------------- runtime adapters


def _runtime_state(cfg: ServeConfig, run_dir: Path) -> dict:
    if not cfg.runtime_lora_updating:
        raise ServeError(f"`runtime_lora_updating` is false in `{cfg.source}`; set it to true and restart the "
                         "server to load or unload adapters at runtime.")
    state = read_state(run_files(cfg.port, run_dir))
    if state is None:
        raise ServeError(f"no server of the launcher runs on port {cfg.port}; start one with `make serve`.")
    if not state["main_alive"]:
        raise ServeError(leftovers(state, cfg.port) + ", then start it again with `make serve`.")
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
    loaded: list[str] = []
    try:
        for url in _adapter_urls(state):
            post(f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(info.path)}, env)
            loaded.append(url)
    except BaseException:  # every replica or none: unload it where it was loaded, then say why
        for url in loaded:
            try:
                post(f"{url}/v1/unload_lora_adapter", {"lora_name": name}, env)
            except (ServeError, httpx.HTTPError):
                pass
        raise


def unload_adapter(cfg: ServeConfig, name: str, run_dir: Path = RUN_DIR,
                   env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    state = _runtime_state(cfg, run_dir)
    for url in _adapter_urls(state):
        post(f"{url}/v1/unload_lora_adapter", {"lora_name": name}, env)


def _adapter_urls(state: Mapping) -> list[str]:
    """Where a runtime adapter goes: the server, or every replica behind the router (a dead one refused)."""
    if not state.get("replicas"):
        return [state["base_url"]]
    dead = [r["base_url"] for r in state["replicas"] if not main_alive(r)]
    if dead:
        raise ServeError(f"the replica{'s' if len(dead) > 1 else ''} at {', '.join(dead)} of the server on "
                         f"{state['base_url']} {'are' if len(dead) > 1 else 'is'} gone, so an adapter would reach "
                         "only some replicas; restart with `make serve-stop` and `make serve`.")
    return [r["base_url"] for r in state["replicas"]]
