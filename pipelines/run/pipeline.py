"""`make all`: the whole pipeline, one stage after another, each a command you could type yourself.

    base model → data → NER adapter + ruozhiba adapter (llamafactory-cli) → one vLLM server with both →
    evaluation of the base and each adapter (OpenAI client; NER also with span-constrained decoding) →
    the NER adapter's every epoch's checkpoint, loaded into the same server (`make curve --attach`) →
    server stopped → results/<run>/report.md

PROFILE=cpu (default) uses the tiny model the project builds and pre-trains itself; PROFILE=gpu uses the
Qwen2.5 configs of conf/ (MODEL= picks the base, e.g. Qwen/Qwen2.5-7B-Instruct). DRY_RUN=1 prints every
command and runs none. The server is stopped whatever happens; a failing stage names itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.common.errors import PipelinesError
from pipelines.common.flags import FlagError, env_flag, env_int
from pipelines.common.paths import RAW_DIR, ROOT, TINY_BASE
from pipelines.data import converters
from pipelines.eval import tasks
from pipelines.eval.report import columns as report_columns
from pipelines.run import report as run_report

PY = str(ROOT / ".venv" / "bin" / "python")
CLI = [PY, "-m", "pipelines"]


@dataclass(frozen=True)
class Profile:
    configs: dict[str, str]  # task → its LoRA config; each adapter is served under its task's name
    serve_config: str
    base_name: str  # the name the server gives the base model
    pretrain: bool  # build and pre-train the tiny model first
    default_model: str


#: The demo's tasks: one NER and one generation task (the run report's criteria read one of each kind).
DEMO_TASKS = ("cluener", "ruozhiba")
PROFILES = {
    "cpu": Profile({t: f"conf/tiny_lora_{t}.yaml" for t in DEMO_TASKS}, "serve/tiny.yaml", "tiny-base", True,
                   os.path.relpath(TINY_BASE, ROOT)),
    "gpu": Profile({t: f"conf/qwen2.5-0.5b-instruct_lora_{t}.yaml" for t in DEMO_TASKS}, "serve/qwen2.5-0.5b.yaml",
                   "qwen2.5-instruct", False, "Qwen/Qwen2.5-0.5B-Instruct"),
}
#: The raw data each task converts from: the bundled samples unless CLUENER_DIR= / RUOZHIBA_FILE= say otherwise.
RAW_DEFAULTS = {t: os.path.relpath(RAW_DIR / str(converters.get(t).sample), ROOT) for t in DEMO_TASKS}


@dataclass
class Stage:
    name: str
    argv: list[str]
    always: bool = False  # runs even after a failure (stopping the server)
    writes: dict = field(default_factory=dict)  # files to write before the command runs (path -> text)
    show: list[str] | None = None  # DRY_RUN: a command that prints the underlying tool command instead


def sized(config: str, model: str) -> str:
    """The config of the model's size when conf/ has one (MODEL=…7B… picks …7b…yaml), else `config`."""
    m = re.search(r"(\d+(?:\.\d+)?)b\b", Path(model).name.lower())
    if m and "0.5b" in config:
        other = config.replace("0.5b", f"{m.group(1)}b")
        if (ROOT / other).exists():
            return other
    return config


def plan(profile_name: str, model: str | None, run_dir: Path, port: int, raw: dict[str, str | None],
         samples: int | None, eval_limit: int | None) -> list[Stage]:
    """The ordered stages of one run. Pure: DRY_RUN prints it and the tests check it."""
    if profile_name not in PROFILES:
        raise PipelinesError(f"`PROFILE={profile_name}` is unknown; use one of: {', '.join(PROFILES)}.")
    p = PROFILES[profile_name]
    model = model or p.default_model
    names = list(p.configs)
    adapters = {t: str(run_dir / "adapters" / t) for t in names}
    stages: list[Stage] = []
    if p.pretrain:
        stages.append(Stage("tiny-base", [*CLI, "tiny-base", "--out", model]))
    for t in names:
        stages.append(Stage(f"data-{t}", [*CLI, "convert", t, "--raw", raw.get(t) or RAW_DEFAULTS[t],
                                          "--out-dir", "data"]))
    limit = [f"max_samples={samples}"] if samples else []
    ranks, per_epoch = [], []
    for t in names:
        config = sized(p.configs[t], model)
        argv = [*CLI, "train", config, f"model_name_or_path={model}", f"output_dir={adapters[t]}", *limit]
        stages.append(Stage(f"train-{t}", argv, show=[*argv, "--dry-run", "--no-check"]))
        train_cfg = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
        ranks.append(int(train_cfg.get("lora_rank") or 8))
        if str(train_cfg.get("save_strategy")) == "epoch":
            per_epoch.append(t)
    serve_cfg = yaml.safe_load((ROOT / p.serve_config).read_text(encoding="utf-8"))
    # runtime LoRA updating: the curve stage loads the NER adapter's checkpoints into this server
    serve_cfg.update(model=model, served_model_name=p.base_name, adapters=adapters, port=port,
                     runtime_lora_updating=True)
    serve_path = run_dir / "serve.yaml"
    stages.append(Stage("serve", [*CLI, "serve", "start", str(serve_path), "--port", str(port)],
                        writes={str(serve_path): yaml.safe_dump(serve_cfg, sort_keys=False, allow_unicode=True)},
                        show=[*CLI, "serve", "command", str(serve_path), "--port", str(port),
                              "--assume-rank", str(max(ranks))]))
    url = f"http://127.0.0.1:{port}/v1"
    lim = ["--limit", str(eval_limit)] if eval_limit else []
    for t in names:
        both = ["--constrain", "both"] if tasks.get(t).constraint else []  # NER: plainly and spans-constrained
        stages.append(Stage(f"eval-{t}", [*CLI, "eval", "--base-url", url, "--task", t,
                                          "--data", tasks.get(t).val_data(), "--model", p.base_name, "--model", t,
                                          "--out", str(run_dir / f"eval-{t}"), "--tokenizer", model, *lim, *both]))
    # the NER adapter's every epoch on the same server, where its config saves a checkpoint per epoch (the tiny one)
    for t in [t for t in per_epoch if tasks.get(t).kind == "ner"][:1]:
        stages.append(Stage(f"curve-{t}", [*CLI, "curve", adapters[t], "--attach", "--serve", str(serve_path),
                                           "--port", str(port), *lim]))
    stages.append(Stage("serve-stop", [*CLI, "serve", "stop", str(serve_path), "--port", str(port)], always=True))
    return stages


def _fmt(argv: list[str]) -> str:
    return " ".join(shlex.quote(a.replace(str(ROOT) + "/", "")) for a in argv)


def execute(stages: list[Stage], dry_run: bool) -> tuple[list[tuple[str, float, str]], str | None]:
    """Run the stages in order; after a failure only the `always` ones run. Returns timings and the failure."""
    timings: list[tuple[str, float, str]] = []
    failed: str | None = None
    for st in stages:
        if failed and not st.always:
            timings.append((st.name, 0.0, "skipped"))
            continue
        print(f"\n==> [{st.name}] {_fmt(st.argv)}", flush=True)
        for path, text in st.writes.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        if dry_run:
            if st.show:  # what that stage would launch: llamafactory-cli / vllm serve
                subprocess.run(st.show, cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "DRY_RUN"})
            timings.append((st.name, 0.0, "dry-run"))
            continue
        t0 = time.time()
        try:
            rc = subprocess.run(st.argv, cwd=ROOT).returncode
        except KeyboardInterrupt:
            rc = 130
        timings.append((st.name, time.time() - t0, "ok" if rc == 0 else f"exit {rc}"))
        if rc != 0 and not failed:
            failed = st.name
            print(f"make all: stage `{st.name}` failed with exit {rc}; see its output above.", file=sys.stderr)
    return timings, failed


def time_table(timings: list[tuple[str, float, str]]) -> str:
    rows = ["| stage | seconds | status |", "|---|---:|---|"]
    rows += [f"| {name} | {secs:.1f} | {status} |" for name, secs, status in timings]
    rows.append(f"| **total** | {sum(t for _, t, _ in timings):.1f} | |")
    return "\n".join(rows)


def headline(run_dir: Path, base: str) -> str:
    """The figures that show what the adapters learned, and whether each criterion holds."""
    lines: list[str] = []
    for t in run_report.run_tasks(run_dir):
        metrics = run_report.load_metrics(run_dir, t)
        if not metrics:
            continue
        spec = tasks.get(t)
        keys = [k for _, k in spec.columns if k != "n"][:5]
        if not lines or lines[-1]:
            lines.append("")
        lines.append(f"  {t}: {'model':<26} " + " ".join(f"{k:>18}" for k in keys))
        for name, m in report_columns(metrics).items():
            m = dict(m, valid_json_rate=1 - m["invalid_json_rate"]) if "invalid_json_rate" in m else m
            lines.append(f"  {' ' * len(t)}  {name:<26} " + " ".join(f"{m.get(k, float('nan')):>18.3f}" for k in keys))
    if not lines:
        return "  (no evaluation results)"
    lines.append("")
    held = run_report.criteria(run_dir, base)
    if held:
        lines.append(f"  criteria ({run_report.BETTER}):")
    for v in held:
        lines.append(f"  [{'PASS' if v.ok else 'FAIL'}] {v.text}: {v.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        dry_default = env_flag("DRY_RUN")
        port, samples, eval_limit = env_int("PORT") or 8000, env_int("SAMPLES"), env_int("EVAL_LIMIT")
    except FlagError as e:
        print(f"make all: {e}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="python -m pipelines all", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=os.environ.get("PROFILE") or "cpu", choices=sorted(PROFILES))
    ap.add_argument("--model", default=os.environ.get("MODEL") or None, help="base model path or hub id")
    ap.add_argument("--run", default=os.environ.get("RUN") or time.strftime("run-%Y%m%d-%H%M%S"))
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--cluener-dir", default=os.environ.get("CLUENER_DIR") or None)
    ap.add_argument("--ruozhiba-file", default=os.environ.get("RUOZHIBA_FILE") or None)
    ap.add_argument("--samples", type=int, default=samples,
                    help="max training samples per adapter (LLaMA-Factory max_samples)")
    ap.add_argument("--eval-limit", type=int, default=eval_limit)
    ap.add_argument("--dry-run", action="store_true", default=dry_default, help="print every command, run none")
    args = ap.parse_args(argv)

    run_dir = ROOT / "results" / args.run
    raw = {"cluener": args.cluener_dir, "ruozhiba": args.ruozhiba_file}
    stages = plan(args.profile, args.model, run_dir, args.port, raw, args.samples, args.eval_limit)
    t0 = time.time()
    timings, failed = execute(stages, args.dry_run)
    table = time_table(timings)
    print("\n" + table)
    if args.dry_run:
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "timings.md").write_text(table + "\n", encoding="utf-8")
    base = PROFILES[args.profile].base_name
    report = run_report.write(run_dir, base)
    if failed:
        print(f"make all: failed at stage `{failed}` after {time.time() - t0:.0f} s; partial report: "
              f"{report.relative_to(ROOT)}", file=sys.stderr)
        return 1
    print(f"\nmake all: finished in {time.time() - t0:.0f} s; report: {report.relative_to(ROOT)}")
    print(headline(run_dir, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
