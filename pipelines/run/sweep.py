"""`make sweep`: train a grid of LoRA adapters, serve them all from one vLLM server, score them the same way, and
write a leaderboard.

    python -m pipelines sweep CONFIG [key=value …] [--ranks 8,64] [--lrs 1e-3,3e-3] [--samples 600]
        [--alpha-ratio R] [--task NAME] [--out saves/sweep] [--serve serve/tiny.yaml] [--max-loras N]
        [--eval-limit N] [--port N] [--no-eval] [--dry-run]

Training is `pipelines.train.grid` (a refused or failed run is a row with its reason; a run already trained with
the same config, data and base is not trained again). Then one server with the base and every adapter that trained
(`max_lora_rank` from the adapters, `max_loras` from their number and the machine: vLLM swaps adapters in and out
when there are more), the evaluator on the task's validation split (NER plainly and span-constrained), the server
stopped in every case, and `OUT/leaderboard.json`, `OUT/leaderboard.md` with plots. The figures are the
evaluator's own (`OUT/eval/metrics.json`). A rerun of the same sweep trains nothing and, when every answer is
saved for the same weights, starts no server and sends nothing. `--no-eval` stops after training.

The leaderboard names the best row with its main figure's interval and marks the rows tied with it: those whose
paired comparison with it on the main metric (metrics.json's `comparisons`) has p >= 0.05. It stays one module
because it is the `sweep` command in order (grid, one server, leaderboard and its plots), each step a call into
the training grid, the serve launcher and the evaluator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipelines.common.errors import PipelinesError
from pipelines.common.io import atomic_write, read_json, write_json
from pipelines.common.paths import rel, resolve
from pipelines.eval import EvalError, tasks
from pipelines.eval.compare import ALPHA, mark_ties
from pipelines.eval.report import figure
from pipelines.run.served import MAX_LORAS, ServedError, score_adapters, serve_config_for
from pipelines.serve.client import ServeError
from pipelines.train import config
from pipelines.train.grid import (
    DEFAULT_LRS,
    DEFAULT_RANKS,
    DEFAULT_SAMPLES,
    GridError,
    Run,
    adapter_paths,
    fmt_lr,
    numbers,
    serve_snippet,
    table,
    train_command,
    train_grid,
    write_snippet,
)

PLOTS = "plots"


class SweepError(PipelinesError, RuntimeError):
    """One sentence; `main` prints it."""


def evaluate(task: str, cfg: dict, runs: list[Run], out: Path, serve_path: Path, *, port: int | None,
             limit: int | None, max_loras: int | None, echo=print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serve the base and every adapter that trained from one server and score them all. (metrics, eval info)"""
    data = tasks.get(task).val_data(str(cfg.get("dataset_dir") or "data"))
    asked = (read_json(out / "leaderboard.json") or {}).get("eval") or {}  # the run that asked for saved answers
    try:
        scored = score_adapters(task, data, adapter_paths(runs), out / "eval", serve_path, port=port, limit=limit,
                                max_loras=max_loras, previous_info=asked, echo=lambda s: echo(f"sweep: {s}"))
    except ServedError as e:
        raise SweepError(f"{e} (or pass `--no-eval`)") from None
    return scored.metrics, scored.info


# ---------------------------------------------------------------- the leaderboard (pure)


def leaderboard(task: str, config_file: str, overrides: list[str], cfg: dict, runs: list[Run],
                metrics: dict[str, Any], info: dict[str, Any], base: str) -> dict[str, Any]:
    """The leaderboard's content: the base row first, then the adapters by the task's main metric (plain, then
    constrained as the tie-break), runs without figures last."""
    spec = tasks.get(task)
    plain, constrained = metrics.get("models") or {}, metrics.get("constrained") or {}
    key = spec.main_metric

    def row(r: Run) -> dict[str, Any]:
        return {**r.record(), "train_command": train_command(config_file, [*overrides, *r.overrides]),
                "metrics": plain.get(r.name), "constrained": constrained.get(r.name)}

    rows = [row(r) for r in runs]
    rows.sort(key=lambda x: (x["metrics"] is None, -((x["metrics"] or {}).get(key) or 0.0),
                             -((x["constrained"] or {}).get(key) or 0.0)))
    base_row = {"name": base, "status": "base", "rank": None, "alpha": None, "learning_rate": None, "samples": None,
                "epochs": None, "train_loss": None, "eval_loss": None, "train_seconds": None,
                "metrics": plain.get(base), "constrained": constrained.get(base)}
    best = next((x for x in rows if x["metrics"] is not None), None)
    tied = mark_ties([base_row, *rows], best["name"], key, metrics.get("comparisons") or []) if best else []
    out = {"task": task, "main_metric": key, "sorted_by": f"{key} (plain), then {key} constrained",
           "config": config_file, "overrides": overrides, "eval": {**info, "metrics": "eval/metrics.json",
                                                                    "data": metrics["data"]},
           "rows": [base_row, *rows], "best": None}
    if best:
        adapters = {best["name"]: adapter_paths([r for r in runs if r.name == best["name"]])[best["name"]]}
        out["best"] = {"name": best["name"], "train_command": best["train_command"],
                       "serve_snippet": serve_snippet(cfg, adapters, [best["rank"]]), "figure": best["metrics"].get(key),
                       "interval": (best["metrics"].get("intervals") or {}).get(key), "tied": tied}
    return out


def _vs_best(r: dict[str, Any], best: str | None) -> str:
    if r["name"] == best:
        return "best"
    c = r.get("vs_best")
    if not c:
        return "–"
    return f"tied (p {c['p_value']:.2f})" if r.get("tied_with_best") else f"{c['diff']:+.3f}, p {c['p_value']:.3f}"


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def render_markdown(board: dict[str, Any], plots: list[str]) -> str:
    spec = tasks.get(board["task"])
    key = board["main_metric"]
    figures = [k for k in dict.fromkeys([key, *spec.summary]) if k != "trailing_text_rate"][:3]
    has_c = any(r.get("constrained") for r in board["rows"])
    has_vs = any(r.get("vs_best") for r in board["rows"])
    best_name = (board.get("best") or {}).get("name")
    head = ["model", "status", "rank", "alpha", "lr", "samples", "epochs", "train loss", "eval loss", "train s",
            *figures, *([f"{key} vs best"] if has_vs else []), *([f"{key} constrained"] if has_c else [])]
    lines = [f"# Sweep leaderboard: `{board['task']}`", "",
             f"`{board['config']}` {' '.join(board['overrides'])}; sorted by {board['sorted_by']}. "
             f"Figures from the evaluator (`{board['eval']['metrics']}`, {board['eval']['data']['n']} records of "
             f"`{board['eval']['data']['path']}`); one server, `max_loras` {board['eval']['max_loras']}"
             + (f", {board['eval']['requests_per_s']} requests/s" if board["eval"].get("requests_per_s") else
                f", {board['eval']['server']}") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in board["rows"]:
        m, c = r.get("metrics") or {}, r.get("constrained") or {}
        status = r["status"] + (f": {r['reason']}" if r.get("reason") and r["status"] in ("refused", "failed") else "")
        cells = [f"`{r['name']}`", status, _f(r["rank"]), _f(r["alpha"]),
                 fmt_lr(r["learning_rate"]) if r["learning_rate"] else "–", _f(r["samples"]), _f(r["epochs"]),
                 _f(r["train_loss"]), _f(r["eval_loss"]), _f(r["train_seconds"], 1), *(_f(m.get(k)) for k in figures),
                 *([_vs_best(r, best_name)] if has_vs else []), *([_f(c.get(key))] if has_c else [])]
        lines.append("| " + " | ".join(cells) + " |")
    best = board.get("best")
    if best:
        lines += ["", f"## Best: `{best['name']}`", "", *_best_lines(board), "", "Reproduce it:", "", "```bash",
                  best["train_command"], "```", "",
                  "Serve it:", "", "```yaml", best["serve_snippet"].rstrip(), "```"]
    for png in plots:
        lines += ["", f"![{png}]({PLOTS}/{png})"]
    return "\n".join(lines) + "\n"


def _best_lines(board: dict[str, Any]) -> list[str]:
    """The best row's figure with its interval, and the rows tied with it."""
    best, key = board["best"], board["main_metric"]
    if best.get("interval") is None:
        return []
    lines = [f"{key} {figure(key, best.get('figure'), best['interval'])} (95% interval)."]
    if not any(r.get("vs_best") for r in board["rows"]):
        return lines
    tied = best.get("tied") or []
    lines.append(f"Not told apart from it on {key} (p ≥ {ALPHA} in the paired test against it), so tied with it: "
                 + ", ".join(f"`{n}`" for n in tied) + "." if tied else
                 f"Every other row differs from it on {key} (p < {ALPHA} in the paired test against it).")
    return lines


def plot(board: dict[str, Any], runs: list[Run], out_dir: Path) -> list[str]:
    """PNGs: the main metric against each swept variable (plain and constrained), and the training-loss curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sweep: matplotlib is not installed; the leaderboard has no plots.", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    key, names = board["main_metric"], []
    scored = [r for r in board["rows"] if r["status"] != "base" and r.get("metrics")]
    for var, label, log in (("rank", "LoRA rank", True), ("learning_rate", "learning rate", True),
                            ("samples", "training samples", False)):
        if len({r[var] for r in scored}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for side, style in (("metrics", "o-"), ("constrained", "s--")):
            pts = sorted((r[var], r[side][key]) for r in scored if r.get(side))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label="plain" if side == "metrics" else
                        "constrained")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(key)
        ax.set_title(f"{board['task']}: {key} by {label}")
        ax.legend()
        fig.tight_layout()
        name = f"{key}_by_{var}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        names.append(name)
    curves = [r for r in runs if r.loss_history]
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in curves:
            ax.plot([s for s, _ in r.loss_history], [v for _, v in r.loss_history], label=r.name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{board['task']}: training loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "train_loss.png", dpi=100)
        plt.close(fig)
        names.append("train_loss.png")
    return names


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines sweep", description=__doc__.splitlines()[0])
    ap.add_argument("config", metavar="CONFIG", help="a LoRA config of conf/, e.g. conf/tiny_lora_cluener.yaml")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    ap.add_argument("--ranks", default=DEFAULT_RANKS, help="lora_rank values (default: %(default)s)")
    ap.add_argument("--lrs", default=DEFAULT_LRS, help="learning_rate values (default: %(default)s)")
    ap.add_argument("--samples", default=DEFAULT_SAMPLES, help="max_samples values (default: %(default)s)")
    ap.add_argument("--alpha-ratio", type=float, help="lora_alpha / lora_rank (default: the config's)")
    ap.add_argument("--task", help="name prefix of the runs (default: the first dataset without _train)")
    ap.add_argument("--out", default="saves/sweep", help="parent folder of the runs (default: %(default)s)")
    ap.add_argument("--serve", help="serve config for the base (default: the one of serve/ that serves it)")
    ap.add_argument("--max-loras", type=int, help=f"adapters in one batch (default: their number, at most "
                                                  f"{MAX_LORAS['cpu']} on the CPU, {MAX_LORAS['cuda']} on a GPU)")
    ap.add_argument("--eval-limit", type=int, help="score the first N validation records only")
    ap.add_argument("--port", type=int, help="server port (default: a free one)")
    ap.add_argument("--no-eval", action="store_true", help="train only (no server, no leaderboard)")
    ap.add_argument("--dry-run", action="store_true", help="check and print the runs, train nothing")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ranks = numbers(args.ranks, int, "--ranks")
        lrs = numbers(args.lrs, float, "--lrs")
        samples = numbers(args.samples, int, "--samples")
    except GridError as e:
        print(e, file=sys.stderr)
        return 2
    for flag, value in (("--max-loras", args.max_loras), ("--eval-limit", args.eval_limit)):
        if value is not None and value < 1:
            print(f"sweep: `{flag} {value}` must be at least 1.", file=sys.stderr)
            return 2
    out = resolve(args.out)
    try:
        task, cfg, runs = train_grid(args.config, args.overrides, ranks, lrs, samples, out=args.out,
                                     ratio=args.alpha_ratio, task=args.task, dry_run=args.dry_run)
        if args.dry_run:
            return 0
        print("\n" + table(runs))
        snippet = write_snippet(cfg, runs, args.out, task)
        if snippet:
            print(f"\n{snippet.read_text(encoding='utf-8')}(written to {rel(snippet)})")
        if args.no_eval:
            return 0 if all(r.ok for r in runs) else 1
        if not any(r.ok for r in runs):
            raise SweepError("no run of the grid trained, so there is nothing to serve; fix the problems above.")
        serve_path = serve_config_for(str(cfg.get("model_name_or_path")), args.serve)
        metrics, info = evaluate(task, cfg, runs, out, serve_path, port=args.port, limit=args.eval_limit,
                                 max_loras=args.max_loras)
        board = leaderboard(task, args.config, args.overrides, cfg, runs, metrics, info, info["base"])
    except (config.CheckError, EvalError, SweepError, ServedError, ServeError, ValueError) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sweep: interrupted; every finished run is kept under `{rel(out)}` (a rerun trains only what is "
              "missing) and the server is stopped.", file=sys.stderr)
        return 130
    plots = plot(board, runs, out / PLOTS)
    write_json(out / "leaderboard.json", board)
    atomic_write(out / "leaderboard.md", render_markdown(board, plots))
    print(f"\nsweep: leaderboard {rel(out / 'leaderboard.md')}")
    best = board["best"]
    if best:
        key = board["main_metric"]
        tied = "; tied with it (p ≥ 0.05): " + ", ".join(f"`{n}`" for n in best["tied"]) if best["tied"] else ""
        print(f"  best: `{best['name']}` ({key} {figure(key, best['figure'], best['interval'])}){tied}; "
              f"reproduce: {best['train_command']}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
