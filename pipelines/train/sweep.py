"""`make sweep`: train a grid of LoRA adapters (rank × learning rate × training samples) to compare them.

    python -m pipelines sweep CONFIG [key=value …] [--ranks 8,64] [--lrs 1e-3,3e-3] [--samples 600]
                              [--alpha-ratio R] [--task NAME] [--out saves/sweep] [--dry-run]

Each combination is one `make train` run into `OUT/<task>-r{rank}-lr{lr}-n{samples}` (e.g.
`saves/sweep/cluener-r8-lr1e-3-n600`), with `lora_alpha = R × rank` (R defaults to the config's alpha/rank, so
that the LoRA scale alpha/rank stays the config's). All combinations are checked before the first one trains.
At the end: a table (rank, lr, samples, train/eval loss, seconds) and a serve snippet — the `adapters:` map of a
`serve/*.yaml` and the matching `vllm serve … --lora-modules` — that serves every adapter from one server;
the snippet is also written to `OUT/<task>-serve.yaml`. `grid` and `run_name` are the pure core.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
import time

import yaml

from pipelines.common.lora import lora_module, servable_rank
from pipelines.common.paths import ROOT, resolve
from pipelines.train import check, config
from pipelines.train import launch as train
from pipelines.train.manifest import read_manifest

DEFAULT_RANKS = "8,64"
DEFAULT_LRS = "1e-3,3e-3"
DEFAULT_SAMPLES = "600"


def fmt_lr(lr: float) -> str:
    """3e-3, 1e-4, 2.5e-4: the shortest scientific form, for folder names."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def run_name(task: str, rank: int, lr: float, samples: int) -> str:
    return f"{task}-r{rank}-lr{fmt_lr(lr)}-n{samples}"


def _numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"sweep: `{flag} {text}` must be comma-separated numbers, e.g. `{flag} 8,64`.") from None
    if not values:
        raise SystemExit(f"sweep: `{flag}` is empty; give at least one value.")
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


def serve_snippet(cfg: dict, adapters: dict[str, str], ranks: list[int]) -> str:
    model = str(cfg.get("model_name_or_path"))
    max_rank = servable_rank(max(ranks))
    modules = " ".join(shlex.quote(lora_module(n, p, model)) for n, p in adapters.items())
    snippet = {"model": model, "adapters": adapters, "max_lora_rank": max_rank, "max_loras": len(adapters)}
    return ("# serve every sweep adapter from one vLLM server: put these keys into a serve/*.yaml, or run\n"
            f"#   vllm serve {model} --enable-lora --max-lora-rank {max_rank} --max-loras {len(adapters)} "
            f"--lora-modules {modules}\n" + yaml.safe_dump(snippet, sort_keys=False, allow_unicode=True))


def table(rows: list[dict]) -> str:
    lines = [f"{'adapter':<34} {'rank':>5} {'lr':>8} {'samples':>8} {'train_loss':>10} {'eval_loss':>9} {'s':>6}"]
    for r in rows:
        tl = f"{r['train_loss']:.4f}" if r.get("train_loss") is not None else "-"
        el = f"{r['eval_loss']:.4f}" if r.get("eval_loss") is not None else "-"
        status = "" if r["exit"] == 0 else f"  FAILED (exit {r['exit']})"
        lines.append(f"{r['name']:<34} {r['rank']:>5} {fmt_lr(r['lr']):>8} {r['samples']:>8} {tl:>10} {el:>9} "
                     f"{r['seconds']:>6.0f}{status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines sweep", description=__doc__.splitlines()[0])
    ap.add_argument("config", metavar="CONFIG", help="a LoRA config of conf/, e.g. conf/tiny_lora_cluener.yaml")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    ap.add_argument("--ranks", default=DEFAULT_RANKS, help="lora_rank values (default: %(default)s)")
    ap.add_argument("--lrs", default=DEFAULT_LRS, help="learning_rate values (default: %(default)s)")
    ap.add_argument("--samples", default=DEFAULT_SAMPLES, help="max_samples values (default: %(default)s)")
    ap.add_argument("--alpha-ratio", type=float, help="lora_alpha / lora_rank (default: the config's)")
    ap.add_argument("--task", help="name prefix of the runs (default: the first dataset without _train)")
    ap.add_argument("--out", default="saves/sweep", help="parent folder of the runs (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="check and print the runs, train nothing")
    args = ap.parse_intermixed_args(argv)
    ranks = _numbers(args.ranks, int, "--ranks")
    lrs = _numbers(args.lrs, float, "--lrs")
    samples = _numbers(args.samples, int, "--samples")

    try:
        cfg = config.load_config(args.config, args.overrides)
    except config.CheckError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    if str(cfg.get("finetuning_type") or "lora") != "lora":
        print(f"sweep: `{args.config}` is not a LoRA config (`finetuning_type: {cfg.get('finetuning_type')}`); "
              "pick a `conf/*_lora_*.yaml`.", file=sys.stderr)
        return 1
    ratio = args.alpha_ratio or float(cfg.get("lora_alpha") or 2 * int(cfg.get("lora_rank") or 8)) / \
        int(cfg.get("lora_rank") or 8)
    task = args.task or task_name(cfg)
    runs = grid(task, ranks, lrs, samples, ratio, args.out)

    # Check every combination first (the token-length measure once): a bad rank fails before anything trains.
    failed = False
    for i, (name, extra) in enumerate(runs):
        report = check.check_config(args.config, [*args.overrides, *extra], measure_lengths=(i == 0))
        if not report.ok or report.warnings:
            print(f"[{name}] " + report.render())
        failed |= not report.ok
    if failed:
        print("sweep: nothing trained; fix the problems above.", file=sys.stderr)
        return 1
    print(f"sweep: {len(runs)} runs of {args.config} ({task}): ranks {ranks} × lrs "
          f"{[fmt_lr(x) for x in lrs]} × samples {samples}, lora_alpha = {ratio:g} × rank", flush=True)
    if args.dry_run:
        for name, extra in runs:
            print(f"  {name}: {' '.join(extra)}")
        return 0

    rows, adapters = [], {}
    for (name, extra), (rank, lr, n) in zip(runs, itertools.product(ranks, lrs, samples)):
        print(f"\n==> sweep [{name}]", flush=True)
        t0 = time.time()
        rc = train.main([args.config, *args.overrides, *extra, "--no-check"])
        out_dir = resolve(f"{args.out.rstrip('/')}/{name}")
        results = (read_manifest(out_dir) or {}).get("results") or {}
        rows.append({"name": name, "rank": rank, "lr": lr, "samples": n, "exit": rc, "seconds": time.time() - t0,
                     "train_loss": results.get("train_loss"), "eval_loss": results.get("eval_loss")})
        if rc == 0:
            inside = out_dir.is_relative_to(ROOT)
            adapters[name] = os.path.relpath(out_dir, ROOT) if inside else str(out_dir)
    print("\n" + table(rows))
    if adapters:
        snippet = serve_snippet(cfg, adapters, [r["rank"] for r in rows if r["name"] in adapters])
        path = resolve(args.out) / f"{task}-serve.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(snippet, encoding="utf-8")
        print(f"\n{snippet}(written to {os.path.relpath(path, ROOT)})")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
