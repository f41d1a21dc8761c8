"""The training half of `make sweep`: a grid of LoRA runs (rank × learning rate × training samples), each checked,
trained or found already trained, each a row of what happened.

Each combination is one `make train` run into `OUT/<task>-r{rank}-lr{lr}-n{samples}` (e.g.
`saves/sweep/cluener-r8-lr1e-3-n600`), with `lora_alpha = R × rank` (R defaults to the config's alpha/rank, so
that the LoRA scale alpha/rank stays the config's). A combination the check refuses (a rank vLLM cannot serve),
or whose training fails, is a row with its one-line reason; the others go on. A run whose manifest matches (same
merged config, same data files, same base weights) is not trained again. `grid` and `run_name` are the pure core;
`pipelines.run.sweep` serves and scores what trained.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipelines.common.errors import PipelinesError
from pipelines.common.lora import servable_rank
from pipelines.common.paths import ROOT, rel, resolve
from pipelines.train import check, config
from pipelines.train import launch as train
from pipelines.train import ranks as dist
from pipelines.train.manifest import read_manifest, stale_reason

DEFAULT_RANKS = "8,64"
DEFAULT_LRS = "1e-3,3e-3"
DEFAULT_SAMPLES = "600"
LOGS = "logs"  # OUT/logs/<run>.log: each run's training output


def fmt_lr(lr: float) -> str:
    """3e-3, 1e-4, 2.5e-4, 1.0000001e-3: the shortest scientific form that reads back as `lr` exactly, for folder
    names (distinct rates never share a folder)."""
    if not math.isfinite(lr):
        return str(lr)
    text = next(t for t in (f"{lr:.{p}e}" for p in range(18)) if float(t) == lr)
    mantissa, exponent = text.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(task: str, rank: int, lr: float, samples: int) -> str:
    return f"{task}-r{rank}-lr{fmt_lr(lr)}-n{samples}"


class GridError(PipelinesError):
    """A grid value that trains nothing or twice; one sentence."""


def numbers(text: str, kind, flag: str) -> list:
    """`--ranks 8,64` as numbers; a one-sentence GridError otherwise."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GridError(f"sweep: `{flag} {text}` must be comma-separated numbers, e.g. `{flag} 8,64`.") from None
    if not values:
        raise GridError(f"sweep: `{flag}` is empty; give at least one value.")
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise GridError(f"sweep: `{flag} {text}` holds {bad[0]}; each value must be a finite number above 0.")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise GridError(f"sweep: `{flag} {text}` gives {twice[0]} more than once, which would train one folder "
                         "twice into two rows; give each value once.")
    return values


def grid(task: str, ranks: list[int], lrs: list[float], samples: list[int], alpha_ratio: float,
         out: str) -> list[tuple[str, list[str]]]:
    """(run name, overrides) of every combination. Pure."""
    runs = []
    for rank, lr, n in itertools.product(ranks, lrs, samples):
        name = run_name(task, rank, lr, n)
        alpha = alpha_ratio * rank
        runs.append((name, [f"lora_rank={rank}", f"lora_alpha={int(alpha) if alpha == int(alpha) else alpha}",
                            f"learning_rate={lr}", f"max_samples={n}", f"output_dir={out.rstrip('/')}/{name}"]))
    return runs


def task_name(cfg: dict) -> str:
    first = (config.as_list(cfg.get("dataset")) or ["run"])[0]
    return first.removesuffix("_train")


def alpha_ratio(cfg: dict, given: float | None) -> float:
    rank = int(cfg.get("lora_rank") or 8)
    return given or float(cfg.get("lora_alpha") or 2 * rank) / rank


def serve_snippet(cfg: dict, adapters: dict[str, str], ranks: list[int]) -> str:
    """The serve-config keys that serve these adapters from one server (the `vllm serve` line itself comes from
    the one command builder: `python -m pipelines serve command CONFIG`)."""
    model = str(cfg.get("model_name_or_path"))
    max_rank = servable_rank(max(ranks))
    snippet = {"model": model, "adapters": adapters, "max_lora_rank": max_rank, "max_loras": len(adapters)}
    return ("# serve these adapters from one vLLM server: put these keys into a serve/*.yaml, then `make serve "
            "SERVE=that.yaml`\n# (`python -m pipelines serve command that.yaml` prints the exact vllm serve line)\n"
            + yaml.safe_dump(snippet, sort_keys=False, allow_unicode=True))


@dataclass
class Run:
    """One combination of the grid and what became of it."""

    name: str
    rank: int
    alpha: float
    learning_rate: float
    samples: int
    epochs: float | None
    overrides: list[str]
    output_dir: str
    status: str = "pending"  # trained | reused | refused (by the check) | failed (training) | planned (dry run)
    reason: str | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    train_seconds: float | None = None
    log: str | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("trained", "reused")

    def record(self) -> dict:
        d = asdict(self)
        d.pop("loss_history")
        return d


def train_command(config_file: str, overrides: list[str]) -> str:
    """The `make train` command line that reproduces one run."""
    return f"make train CONFIG={config_file} ARGS={shlex.quote(' '.join(overrides))}"


def _results(run: Run) -> None:
    """Losses, time and loss curve from the run's manifest and trainer state."""
    folder = resolve(run.output_dir)
    manifest = read_manifest(folder) or {}
    results = manifest.get("results") or {}
    run.train_loss, run.eval_loss = results.get("train_loss"), results.get("eval_loss")
    run.train_seconds = manifest.get("duration_s")
    state = folder / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
        run.loss_history = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]


_ERROR = re.compile(r"^(?:[\w.]*(?:Error|Exception)|error): (.+)$")


def failure_reason(log_text: str, rc: int) -> str:
    """One line: the last error message in a training log, else the exit status."""
    found = [m.group(0) for line in log_text.splitlines() if (m := _ERROR.match(line.strip()))]
    return found[-1][:300] if found else f"`make train` exited with {rc}"


def _train(run: Run, config_file: str, base_overrides: list[str], logs: Path) -> None:
    """Train one run as `python -m pipelines train` in a child process, its output shown and kept in a log."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{run.name}.log"
    cmd = [sys.executable, "-m", "pipelines", "train", config_file, *base_overrides, *run.overrides, "--no-check"]
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
        rc = proc.wait()
    run.log = rel(log)
    _results(run)
    run.train_seconds = run.train_seconds or round(time.time() - t0, 1)
    if rc == 0:
        run.status = "trained"
    else:
        run.status, run.reason = "failed", failure_reason(log.read_text(encoding="utf-8"), rc)


def train_grid(config_file: str, overrides: list[str], ranks: list[int], lrs: list[float], samples: list[int], *,
               out: str, ratio: float | None = None, task: str | None = None, dry_run: bool = False,
               echo=print) -> tuple[str, dict, list[Run]]:
    """Check every combination, then train those not trained already. (task, merged config, runs)"""
    cfg = config.load_config(config_file, overrides)
    if str(cfg.get("finetuning_type") or "lora") != "lora":
        raise config.CheckError(f"`{config_file}` is not a LoRA config (`finetuning_type: "
                                f"{cfg.get('finetuning_type')}`); pick a `conf/*_lora_*.yaml`.")
    ratio = alpha_ratio(cfg, ratio)
    world = dist.world(dist.gpu_ranks(cfg, os.environ))  # the ranks `make train` will start for each run
    dist.per_rank(cfg, *world)  # a batch the ranks cannot share is refused before anything trains
    task = task or task_name(cfg)
    runs: list[Run] = []
    measured = False
    for (name, extra), (rank, lr, n) in zip(grid(task, ranks, lrs, samples, ratio, out),
                                            itertools.product(ranks, lrs, samples)):
        merged = config.load_config(config_file, [*overrides, *extra])
        run = Run(name, rank, ratio * rank, lr, n, merged.get("num_train_epochs"), extra,
                  str(merged.get("output_dir")))
        report = check.check_config(config_file, [*overrides, *extra], measure_lengths=not measured)
        measured = measured or report.ok
        if not report.ok:
            run.status, run.reason = "refused", report.problems[0]
            echo(f"[{name}] " + report.render())
        else:
            for w in report.warnings:
                echo(f"[{name}] warning: {w}")
            expected = {**merged, "bf16": False} if train.precision_overrides(merged) else merged
            expected = {**expected, **dist.per_rank(expected, *world)}  # as `make train` splits it over the ranks
            why = stale_reason(resolve(run.output_dir), expected)
            if why is None:
                run.status = "reused"
                _results(run)
                log = resolve(out) / LOGS / f"{name}.log"
                run.log = rel(log) if log.is_file() else None
            else:
                run.reason = why
        runs.append(run)
    echo(f"sweep: {len(runs)} runs of {config_file} ({task}): ranks {ranks} × lrs {[fmt_lr(x) for x in lrs]} × "
         f"samples {samples}, lora_alpha = {ratio:g} × rank; "
         + ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in ("refused", "reused", "pending")))
    for run in runs:
        if run.status != "pending":
            continue
        if dry_run:
            run.status = "planned"
            echo(f"  {run.name}: {' '.join(run.overrides)} ({run.reason})")
            continue
        echo(f"\n==> sweep [{run.name}] ({run.reason})")
        _train(run, config_file, overrides, resolve(out) / LOGS)
        if run.status == "failed":
            echo(f"sweep: [{run.name}] failed: {run.reason}; the other runs go on.")
    return task, cfg, runs


def table(runs: list[Run]) -> str:
    lines = [f"{'adapter':<34} {'rank':>5} {'lr':>8} {'samples':>8} {'train_loss':>10} {'eval_loss':>9} {'s':>6}  status"]
    for r in runs:
        tl = f"{r.train_loss:.4f}" if r.train_loss is not None else "-"
        el = f"{r.eval_loss:.4f}" if r.eval_loss is not None else "-"
        s = f"{r.train_seconds:.0f}" if r.train_seconds is not None else "-"
        status = r.status + (f": {r.reason}" if r.status in ("refused", "failed") else "")
        lines.append(f"{r.name:<34} {r.rank:>5} {fmt_lr(r.learning_rate):>8} {r.samples:>8} {tl:>10} {el:>9} "
                     f"{s:>6}  {status}")
    return "\n".join(lines)


def adapter_paths(runs: list[Run]) -> dict[str, str]:
    """name → folder (relative to the repository when inside it) of every run that has an adapter."""
    out = {}
    for r in runs:
        if r.ok:
            folder = resolve(r.output_dir)
            out[r.name] = os.path.relpath(folder, ROOT) if folder.is_relative_to(ROOT) else str(folder)
    return out


def write_snippet(cfg: dict, runs: list[Run], out: str, task: str) -> Path | None:
    """OUT/<task>-serve.yaml: the serve keys of every adapter that trained."""
    adapters = adapter_paths(runs)
    if not adapters:
        return None
    path = resolve(out) / f"{task}-serve.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(serve_snippet(cfg, adapters, [r.rank for r in runs if r.name in adapters]), encoding="utf-8")
    return path
