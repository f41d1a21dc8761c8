"""`make train`: check a config, then train it with `llamafactory-cli train`, and write a manifest beside the result.

    python -m pipelines train CONFIG [key=value …] [--no-check] [--dry-run]

Environment (the Makefile passes these through):
    RESUME=1                 continue from the latest `checkpoint-N` of `output_dir`
                             (`resume_from_checkpoint=… overwrite_output_dir=false` are appended)
    DEEPSPEED=PATH           appends `deepspeed=PATH` (e.g. conf/deepspeed/ds_z3_config.json) and uses torchrun
    NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
                             reach LLaMA-Factory's own torchrun launcher (`llamafactory/launcher.py`), which
                             reads them when FORCE_TORCHRUN=1; that is set when NPROC_PER_NODE > 1, NNODES > 1
                             or DEEPSPEED is given. Empty values (as `make` exports unset variables) are dropped.
                             Several ranks train the config's one-process global batch (`pipelines.train.ranks`).
    DRY_RUN=1                print the command and the launcher's environment, run nothing
    TRACKER=tensorboard|swanlab|none   where the loss is logged, offline (`pipelines.train.trackers`); unset: the
                             config's `report_to`. Its log folder is printed and kept in the manifest's `tracker`.

Ctrl-C stops the training (SIGTERM to llamafactory-cli and what it started, SIGKILL after a grace period) and
ends with one line: the checkpoints kept in `output_dir`, how to resume them, and the manifest, written with exit
status 130. llamafactory-cli runs with SIGINT ignored, so the terminal's Ctrl-C reaches only this launcher and
the training stops without a traceback of its own.

`build_launch` is the pure core: (config, overrides, environment) → (argv, env). The manifest,
`OUTPUT_DIR/pipelines_manifest.json`, is `pipelines.train.manifest`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pipelines.common import device, lfcli
from pipelines.common.errors import PipelinesError
from pipelines.common.flags import FlagError, config_flag, env_flag, env_int
from pipelines.common.paths import ROOT, TINY_BASE, TINY_MODEL, is_local, rel, resolve
from pipelines.common.process import (
    STOP_GRACE_S,
    descendants,
    sigint_ignored,
    signal_all,
    start_time,
    stop_even_on_ctrl_c,
)
from pipelines.train import check, config, ranks, trackers
from pipelines.train.manifest import write_manifest

DIST_VARS = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
CONTROL_VARS = ("DEEPSPEED", "RESUME", "DRY_RUN", "TRACKER")  # ours; not passed on to LLaMA-Factory
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: The folder of the `sitecustomize` that lets training ranks on the CPU resume (see its docstring).
CPU_RANKS = Path(__file__).resolve().parent / "cpu_ranks"
INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it


class TrainError(PipelinesError):
    """A one-sentence problem with the launch settings; `main` prints it without a traceback."""


def build_launch(config: str, overrides: list[str], environ: Mapping[str, str], resume_from: str | None = None,
                 offline: bool = True, on_cpu: bool = False) -> tuple[list[str], dict[str, str]]:
    """The llamafactory-cli command line and its environment. Pure: reads nothing but its arguments (and the
    cores it may use). `on_cpu`: the config trains on the CPU (`use_cpu`), so several ranks get `CPU_RANKS` first
    on PYTHONPATH (its `sitecustomize` lets them load their checkpoint's optimizer on `RESUME=1`)."""
    nproc, nnodes = ranks.world(environ)
    node_rank = env_int("NODE_RANK", environ, minimum=0)
    env_int("MASTER_PORT", environ)
    if node_rank is not None and node_rank >= nnodes:
        raise TrainError(f"`NODE_RANK={node_rank}` must be below `NNODES={nnodes}`; number the nodes 0 … "
                         "NNODES-1.")
    if nnodes > 1 and not environ.get("MASTER_ADDR"):
        raise TrainError(f"`NNODES={nnodes}` needs `MASTER_ADDR`, the address of the node with NODE_RANK=0, "
                         "on every node.")
    deepspeed = environ.get("DEEPSPEED") or None

    args = [str(config), *overrides]
    if deepspeed:
        args.append(f"deepspeed={deepspeed}")
    if resume_from:
        args += [f"resume_from_checkpoint={resume_from}", "overwrite_output_dir=false"]

    env = lfcli.cli_env(offline=offline, base=environ)
    for name in DIST_VARS:
        if not env.get(name):
            env.pop(name, None)
    for name in CONTROL_VARS:
        env.pop(name, None)
    if deepspeed or nproc > 1 or nnodes > 1:
        env["FORCE_TORCHRUN"] = "1"
    if nproc > 1 and not environ.get("OMP_NUM_THREADS"):  # the ranks of a node share its cores
        env["OMP_NUM_THREADS"] = str(max(1, device.usable_cores() // nproc))
    if on_cpu and nproc * nnodes > 1:
        env["PYTHONPATH"] = os.pathsep.join([str(CPU_RANKS), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return lfcli.cli("train", *args), env


def precision_overrides(cfg: Mapping, native_bf16: bool | None = None) -> list[str]:
    """`["bf16=false"]` when a CPU config (`use_cpu`) asks for bf16 autocast on a CPU that has no native bf16, else
    `[]`. The tiny configs ask for bf16: 1.4x faster than fp32 where the CPU has AVX512-BF16 or AMX."""
    if not (config_flag(cfg, "use_cpu") and config_flag(cfg, "bf16")):  # as check reads them
        return []
    native = device.cpu_native_bf16() if native_bf16 is None else native_bf16
    return [] if native else ["bf16=false"]


def checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of output_dir that hold a trainer state, by N (RESUME's and `make curve`'s)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if p.is_dir() and (m := CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int | None:
    """N of a `…/checkpoint-N` path, else None."""
    m = CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The `checkpoint-N` folder of output_dir with the largest N that holds a trainer state."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def ensure_tiny_model(cfg: Mapping) -> None:
    """A fresh clone has no tiny model yet: build it (`make tiny-base`, cached) when the config names it."""
    model = str(cfg.get("model_name_or_path") or "")
    if not model or (resolve(model) / "config.json").is_file():
        return
    target = resolve(model).resolve()
    if target == Path(TINY_BASE).resolve():
        from pipelines.models import pretrain

        print(f"train: `{model}` is missing; building it first (`make tiny-base`) …", flush=True)
        if pretrain.main(["--out", str(target)]) != 0:
            raise TrainError("`make tiny-base` failed; see its output above.")
    elif target == Path(TINY_MODEL).resolve():
        from pipelines.models import tiny

        print(f"train: `{model}` is missing; building it first (`make tiny-model`) …", flush=True)
        if tiny.main(["--out", str(target)]) != 0:
            raise TrainError("`make tiny-model` failed; see its output above.")


# ------------------------------------------------------------------------------------------ the training run

def stop_run(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Stop llamafactory-cli and everything it started: SIGTERM, then SIGKILL after `grace` s (at once on a
    second Ctrl-C)."""
    procs = [(proc.pid, start_time(proc.pid) or ""), *descendants(proc.pid)]

    def send(sig: int) -> None:
        signal_all(procs, sig)

    def alive() -> bool:
        proc.poll()
        return bool(signal_all(procs, 0))

    stop_even_on_ctrl_c(send, alive, grace)
    with sigint_ignored():
        proc.wait()


def run_training(cmd: list[str], env: Mapping[str, str]) -> tuple[int, bool]:
    """Run llamafactory-cli with its output streamed to ours; (exit status, interrupted by Ctrl-C)."""
    print("$", " ".join(cmd), flush=True)
    # SIGINT ignored while the child is created: an ignored signal stays ignored across exec, and Python then
    # installs no KeyboardInterrupt handler of its own, so Ctrl-C reaches only this launcher, which stops it.
    with sigint_ignored():
        proc = subprocess.Popen(cmd, env=dict(env), cwd=ROOT, stdout=sys.stdout, stderr=sys.stderr)
    try:
        return proc.wait(), False
    except KeyboardInterrupt:
        stop_run(proc)
        return INTERRUPTED, True


def interrupted_line(config_arg: str, overrides: list[str], output_dir: Path, manifest: Path | None,
                     cfg: Mapping) -> str:
    """The one line a Ctrl-C ends with: what was kept and how to go on."""
    args = f' ARGS="{" ".join(overrides)}"' if overrides else ""
    ckpt = latest_checkpoint(output_dir)
    shown = rel(output_dir)
    if ckpt is not None:
        cut = [p.name for p in sorted(output_dir.glob("checkpoint-*"), key=lambda p: checkpoint_step(p) or 0)
               if (checkpoint_step(p) or 0) > (checkpoint_step(ckpt) or 0) and p.is_dir()]
        skipped = f"; `{'`, `'.join(cut)}`, cut off while saving, is skipped" if cut else ""
        kept = (f"the checkpoints in `{shown}` are kept (latest `{ckpt.name}`{skipped}); resume with "
                f"`make train CONFIG={config_arg}{args} RESUME=1`")
    elif str(cfg.get("save_strategy", "steps")).lower() in ("no", "false"):  # `save_strategy=no` reads as false
        kept = f"no checkpoint was saved (`save_strategy: no`), so `make train CONFIG={config_arg}{args}` starts over"
    else:
        kept = (f"no checkpoint was saved yet in `{shown}` (`save_steps: {cfg.get('save_steps', 500)}`), so "
                f"`make train CONFIG={config_arg}{args}` starts over")
    where = (f"the manifest `{rel(manifest)}` records exit status {INTERRUPTED}" if manifest else
             "no manifest was written (`output_dir` was not created yet)")
    return f"train: interrupted (Ctrl-C); {kept}; {where}."


def _tracker(args: argparse.Namespace, cfg: dict, output_dir: Path,
             environ: Mapping[str, str]) -> tuple[dict, dict, dict[str, str]]:
    """`TRACKER=`: its overrides appended to the command line; (config, where it logs, its environment)."""
    kind = trackers.kind(environ)
    if kind is None:
        return cfg, {}, {}
    extra, env, where = trackers.plan(kind, output_dir, trackers.stamp())
    args.overrides += extra
    cfg = {**cfg, **dict(o.split("=", 1) for o in extra)}
    print(f"train: TRACKER={kind}: logging to {rel(where['dir']) if where['dir'] else 'nothing'}", flush=True)
    return cfg, where, env


# ---------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines train", description=__doc__.splitlines()[0])
    ap.add_argument("config", metavar="CONFIG", help="a LLaMA-Factory YAML of conf/")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as llamafactory-cli takes them")
    ap.add_argument("--no-check", action="store_true", help="skip `make check` (it runs first by default)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and its environment (or DRY_RUN=1)")
    args = ap.parse_intermixed_args(argv)
    environ = dict(os.environ if environ is None else environ)
    try:
        dry_run = args.dry_run or env_flag("DRY_RUN", env=environ)
        resume = env_flag("RESUME", env=environ)
    except FlagError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    ds = environ.get("DEEPSPEED")
    checked = args.overrides + ([f"deepspeed={ds}"] if ds else [])
    try:
        return _main(args, environ, dry_run, resume, checked)
    except KeyboardInterrupt:
        print("train: interrupted (Ctrl-C) before training started; nothing was trained.", file=sys.stderr)
        return INTERRUPTED


def _main(args: argparse.Namespace, environ: dict[str, str], dry_run: bool, resume: bool, checked: list[str]) -> int:
    user_overrides = list(args.overrides)
    try:
        config_path = config.find_config(args.config)
        cfg = config.load_config(config_path, checked)
        ensure_tiny_model(cfg)
        if not args.no_check:
            report = check.check_config(config_path, checked)
            print(report.render(), file=sys.stdout if report.ok else sys.stderr, flush=True)
            if not report.ok:
                print(f"train: not launched; fix the problems above (`make check CONFIG={args.config}`).",
                      file=sys.stderr)
                return 1
            cfg = report.merged
        output_dir = resolve(str(cfg.get("output_dir") or ""))
        if not cfg.get("output_dir"):
            raise TrainError(f"`output_dir` is not set in `{args.config}`; add e.g. `output_dir: saves/…`.")
        resume_from = None
        if resume:
            ckpt = latest_checkpoint(output_dir)
            if ckpt is None:
                saves = str(cfg.get("save_strategy", "steps")).lower()
                why = (" (the config saves none: `save_strategy: no`; set `save_strategy=steps save_steps=N`)"
                       if saves in ("no", "false") else f" (`save_strategy: {saves}`: none was saved yet)")
                raise TrainError(f"`RESUME=1` but `{cfg['output_dir']}` holds no `checkpoint-N`{why}; "
                                 "run without RESUME to start over.")
            resume_from = rel(ckpt)
        model = str(cfg.get("model_name_or_path") or "")
        extra = precision_overrides(cfg)
        if extra:
            print("train: this CPU has no native bf16 (AVX512-BF16, AMX), so bf16 autocast would only be emulated "
                  "here; training in fp32 (`bf16=false`).", flush=True)
            args.overrides += extra
            cfg = {**cfg, "bf16": False}
        environ = ranks.gpu_ranks(cfg, environ)
        cfg, split = ranks.split(cfg, *ranks.world(environ))
        args.overrides += split
        cfg, where, tracker_env = _tracker(args, cfg, output_dir, environ)
        cmd, env = build_launch(rel(config_path), args.overrides, environ, resume_from,
                                offline=is_local(model) if model else True, on_cpu=config_flag(cfg, "use_cpu"))
        env.update(tracker_env)
    except (config.CheckError, TrainError, FlagError, trackers.TrackerError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1

    if dry_run:
        shown = {k: env[k] for k in (*DIST_VARS, "FORCE_TORCHRUN", "HF_HUB_OFFLINE", *tracker_env) if k in env}
        print("$", " ".join(a.replace(str(ROOT) + "/", "") for a in cmd))
        print("  env:", " ".join(f"{k}={v}" for k, v in shown.items()) or "(defaults)")
        return 0

    final_cfg = dict(cfg)
    if resume_from:
        final_cfg.update(resume_from_checkpoint=resume_from, overwrite_output_dir=False)
    started = time.time()
    rc, interrupted = run_training(cmd, env)
    ended = time.time()
    writer = (environ.get("NODE_RANK") or "0") == "0"
    tracked = trackers.finish(where, started)
    if interrupted:
        path = None
        if writer and output_dir.is_dir():
            with sigint_ignored():  # a second Ctrl-C must not cut the manifest
                path = write_manifest(output_dir, config=args.config, overrides=args.overrides, cfg=final_cfg,
                                      argv=cmd, env=env, started=started, ended=ended, exit_code=rc,
                                      resumed_from=resume_from, tracker=tracked)
        line = interrupted_line(args.config, user_overrides, output_dir, path, final_cfg)
        print("\n" + line, file=sys.stderr)  # on a line of its own, not after the progress bar's
        return rc
    if writer and output_dir.is_dir():
        path = write_manifest(output_dir, config=args.config, overrides=args.overrides, cfg=final_cfg, argv=cmd,
                              env=env, started=started, ended=ended, exit_code=rc, resumed_from=resume_from,
                              tracker=tracked)
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        losses = ", ".join(f"{k} {results[k]:.4f}" for k in ("train_loss", "eval_loss") if k in results)
        print(f"train: {'wrote' if rc == 0 else 'failed;'} {rel(output_dir)} in {ended - started:.0f} s"
              f"{' (' + losses + ')' if losses else ''}; manifest {rel(path)}", flush=True)
        if tracked:
            print(f"train: {tracked['kind']} log in {tracked['dir']} ({trackers.watch_command(tracked)})", flush=True)
    if rc != 0:
        print(f"train: `llamafactory-cli train {args.config}` failed with exit {rc}; see its output above.",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
