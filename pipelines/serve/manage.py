"""`make serve` / `serve-status` / `serve-stop` / `lora-load` / `lora-unload`: a vLLM OpenAI server, many LoRAs.

    python -m pipelines serve start   CONFIG [--port N] [--replicas N] [--timeout S]
    python -m pipelines serve status  CONFIG [--port N] [--json]
    python -m pipelines serve stop    CONFIG [--port N] [--grace S]
    python -m pipelines serve load    CONFIG --name NAME --path ADAPTER [--port N]
    python -m pipelines serve unload  CONFIG --name NAME [--port N]
    python -m pipelines serve command CONFIG [--port N]      # print the vllm command and its environment

Never imports vLLM: it runs `.venv-vllm/bin/vllm serve …` as a process in its own process group (PID file and
log under `.serve/<port>/`) and talks to it over HTTP. `VLLM_API_KEY`, when set, reaches the server through
its environment only: never on the command line, in a file or in a log.

`replicas: N` (or `--replicas N`, make's REPLICAS=) > 1 starts N servers behind vllm-router on the config's port
(pipelines/serve/replicas.py); status, stop, load and unload then reach the router and every replica.

A server whose main process died (`kill -9`, the OOM killer) is still found through its process group: `status`
names the processes left (exit 1), `stop` ends them, `start` refuses until then. Ctrl-C during `start` stops the
server it launched and keeps its log (exit 130).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import httpx

from pipelines.common.errors import PipelinesError
from pipelines.common.paths import resolve
from pipelines.serve.client import ServeError
from pipelines.serve.config import AdapterInfo, ServeConfigError, load, precheck
from pipelines.serve.process import (
    RUN_DIR,
    STOP_GRACE,
    ServeInterrupted,
    load_adapter,
    read_state,
    run_files,
    status,
    stop,
    unload_adapter,
)
from pipelines.serve.replicas import replica_configs, start
from pipelines.serve.router import router_command
from pipelines.serve.vllm_args import build_command, build_env, shown_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines serve", description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["start", "status", "stop", "load", "unload", "command"])
    ap.add_argument("config", help="a serve config, e.g. serve/tiny.yaml")
    ap.add_argument("--port", type=int, help="override the config's `port`")
    ap.add_argument("--replicas", type=int, help="start: override the config's `replicas` (servers behind the router)")
    ap.add_argument("--json", action="store_true", help="status: print the status as JSON")
    ap.add_argument("--name", help="adapter name (load, unload)")
    ap.add_argument("--path", help="adapter folder (load)")
    ap.add_argument("--timeout", type=float, help="seconds to wait for the server (default: `startup_timeout`)")
    ap.add_argument("--grace", type=float, default=STOP_GRACE, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--run-dir", type=Path, default=RUN_DIR, help="PID files and logs (default: %(default)s)")
    ap.add_argument("--assume-rank", type=int, metavar="R",
                    help="command only: skip the checks and size --max-lora-rank for adapters of rank R "
                         "(a dry run before the adapters exist)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (ServeConfigError, ServeError) as e:
        print(f"serve {args.action}: {e}" if not isinstance(e, ServeConfigError) or len(e.problems) == 1
              else f"serve {args.action}: {len(e.problems)} problems:\n  - " + "\n  - ".join(e.problems),
              file=sys.stderr)
        return 1
    except PipelinesError as e:  # e.g. a bad PIPELINES_DEVICE, said in one sentence by `has_cuda`
        print(f"serve {args.action}: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:  # load/unload against a server that stopped answering
        print(f"serve {args.action}: the server does not answer ({type(e).__name__}: {e}); check it with "
              "`make serve-status`.", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"serve {args.action}: {_interrupted(args, e)}", file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace, e: KeyboardInterrupt) -> str:
    """One sentence for Ctrl-C: what was stopped and what was kept."""
    if isinstance(e, ServeInterrupted):  # start had launched the server
        return f"interrupted (Ctrl-C); the server (pid {e.pid}) was stopped, its log kept at {e.log}."
    if args.action == "start":
        return "interrupted (Ctrl-C) before the server was launched; nothing was started."
    if args.action == "stop":
        return ("interrupted (Ctrl-C) while stopping; run `make serve-stop"
                f"{' PORT=' + str(args.port) if args.port else ''}` again to end what is left.")
    return "interrupted (Ctrl-C)."


def _run(args: argparse.Namespace) -> int:
    if args.action == "stop":
        port = args.port if args.port is not None else load(args.config).port
        before = read_state(run_files(port, args.run_dir))
        pid = stop(port, args.run_dir, args.grace)
        if pid and before and not before["main_alive"]:
            n = len(before["alive"])
            what = (f"of the replicas started on port {port} before their router" if before.get("starting") else
                    f"left of the server on port {port}")
            print(f"serve: ended the {n} process{'es' if n != 1 else ''} {what} "
                  f"(pid{'s' if n != 1 else ''} {', '.join(map(str, before['alive']))}"
                  + ("" if before.get("starting") else f"; its main process {pid} was gone") + ")")
        else:
            print(f"serve: stopped the server on port {port} (pid {pid})" if pid else
                  f"serve: no server of the launcher runs on port {port}; nothing to stop")
        return 0
    cfg = load(args.config, port=args.port, replicas=args.replicas)
    if args.action == "command":
        if args.assume_rank:
            adapters = [AdapterInfo(n, resolve(p), args.assume_rank, cfg.model) for n, p in cfg.adapters.items()]
        else:
            adapters = precheck(cfg, check_port=False)
        if cfg.replicas > 1:  # what `start` runs: N such servers (ports picked at start) behind the router
            reps = replica_configs(cfg, os.environ)
            print(f"# {cfg.replicas} replicas (ports here are examples; start picks free ones), behind:")
            print("# " + shlex.join(router_command(cfg, [f"http://{r.host}:{r.port}" for r in reps])))
            cfg = reps[0]
        env = build_env(cfg)
        for k, v in sorted(shown_env(env, os.environ).items()):
            print(f"export {k}={shlex.quote(v)}")
        print(shlex.join(build_command(cfg, adapters)))
        return 0
    if args.action == "start":
        s = start(cfg, run_dir=args.run_dir, timeout=args.timeout)
        served = [m for m in s.models if m != cfg.served_model_name]
        print(f"serve: ready in {s.seconds:.0f} s at {s.base_url}: base `{cfg.served_model_name}`, adapters "
              f"{', '.join(served) or '(none)'}; pid {s.pid}, log {s.log}; stop with "
              f"`make serve-stop PORT={cfg.port}`")
        return 0
    if args.action == "status":
        st = status(cfg.port, args.run_dir)
        dead = [r for r in st.get("replicas") or [] if not r["alive"]]
        if args.json:
            print(json.dumps(st, indent=2))
            return 0 if st["running"] and st["healthy"] and not dead else 1
        if st.get("leftover"):
            print(f"serve: {st['message']}.")
            return 1
        if not st["running"]:
            other = " (but something answers /health there)" if st["healthy"] else ""
            print(f"serve: no server of the launcher runs on port {cfg.port}{other}")
            return 1
        if st.get("replicas"):
            print(f"serve: router pid {st['pid']} on {st['base_url']}/v1 ({st['config']}) before "
                  f"{len(st['replicas'])} replicas: "
                  + ", ".join(f"pid {r['pid']} on {r['url']}{'' if r['alive'] else ' (dead)'}" for r in st["replicas"]))
            for r in dead:
                print(f"serve: replica pid {r['pid']} on {r['url']} is dead; the router sends its requests to the "
                      f"others; `make serve-stop PORT={cfg.port}` and `make serve` bring it back.")
        print(f"serve: pid {st['pid']} on {st['base_url']}/v1 ({st['config']}), "
              + (f"serving {', '.join(st['models'])}" if st["healthy"] else "not healthy yet")
              + f"; log {st['log']}")
        return 0 if st["healthy"] and not dead else 1
    if not args.name:
        raise ServeError(f"`--name` is required for `{args.action}` (make: NAME=…).")
    if args.action == "load":
        if not args.path:
            raise ServeError("`--path` is required for `load` (make: ADAPTER=…).")
        load_adapter(cfg, args.name, args.path, args.run_dir)
        print(f"serve: loaded adapter `{args.name}` from {args.path}")
    else:
        unload_adapter(cfg, args.name, args.run_dir)
        print(f"serve: unloaded adapter `{args.name}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
