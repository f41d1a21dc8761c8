"""The evaluation report: OUT/report.md from metrics.json's content, with PNG plots made by matplotlib (Agg).

`render_markdown` is pure (metrics + examples → text); `write_report` adds the plots and writes the files. Every
figure that has an interval in metrics.json is shown as `0.654 [0.610, 0.700]` (the level said once), and the
comparisons of the task's main and summary metrics as a table (`significance_lines`, which `python -m pipelines
compare` prints with every comparison).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.common.io import write_json
from pipelines.eval import tasks

PER_TYPE_PNG = "per_type_f1.png"
EXAMPLES = "examples.json"  # the report's examples, for the run report
SCORES_PNG = "scores.png"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _block(text: str) -> list[str]:
    fence = "````" if "```" in text else "```"
    return [fence, text, fence]


CONSTRAINED = " (constrained)"
#: Decimals of a figure: BLEU/ROUGE are on a 0-100 scale, lengths in characters; the rest are fractions.
DIGITS = {"bleu_4": 2, "rouge_1": 2, "rouge_2": 2, "rouge_l": 2, "mean_length": 1, "mean_reference_length": 1}


def figure(metric: str, value: Any, interval: dict[str, float] | None = None) -> str:
    """`0.654 [0.610, 0.700]`: a figure and, when given, its interval."""
    if isinstance(value, (bool, int)) or not isinstance(value, float):
        return "–" if value is None or value == "" else str(value)
    digits = DIGITS.get(metric, 3)
    text = f"{value:.{digits}f}"
    if interval:
        text += f" [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
    return text


def difference(c: dict[str, Any]) -> tuple[str, str, str]:
    """A comparison's Δ (signed), its interval and its p-value, formatted."""
    digits = DIGITS.get(c["metric"], 3)
    return (f"{c['diff']:+.{digits}f}", f"[{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]", f"{c['p_value']:.3f}")


def level_text(metrics: dict[str, Any]) -> str | None:
    """`95% intervals: …`, said once; None for metrics without intervals (eval spec < 3)."""
    how = (metrics.get("settings") or {}).get("intervals")
    if not how:
        return None
    return (f"{how['level'] * 100:g}% intervals in brackets: {how['method']} over the records ({how['resamples']} "
            f"resamples, seed {how['seed']}); comparisons: Δ = a − b on the same records, its paired bootstrap "
            f"interval and the p-value of a two-sided paired approximate randomization test "
            f"({how.get('permutations', how['resamples'])} permutations)")


def scores_table(metrics: dict[str, Any]) -> list[str]:
    """The report rows, one column per evaluated entry, each figure with its interval."""
    ms = columns(metrics)
    models = list(ms)
    rows = tasks.get(metrics["task"]).rows
    return _table(["metric", *(f"`{m}`" for m in models)],
                  [[r, *(figure(r, ms[m].get(r, ""), (ms[m].get("intervals") or {}).get(r)) for m in models)]
                   for r in rows if any(r in ms[m] for m in models)])


def shown_comparisons(metrics: dict[str, Any], every: bool = False) -> list[dict[str, Any]]:
    """The comparisons to show, main metric first: every one, or those of the main and summary metrics."""
    spec = tasks.get(metrics["task"])
    head = list(dict.fromkeys([spec.main_metric, *spec.summary]))
    wanted = list(dict.fromkeys([*head, *spec.rows])) if every else head
    found = [c for c in metrics.get("comparisons") or [] if c.get("metric") in wanted]
    return sorted(found, key=lambda c: wanted.index(c["metric"]))


def comparisons_table(found: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for c in found:
        diff, interval, p = difference(c)
        reads = "a higher" if c["low"] > 0 else "a lower" if c["high"] < 0 else "not told apart"
        rows.append([f"`{c['a']}`", f"`{c['b']}`", c["metric"], diff, interval, p, reads])
    return _table(["a", "b", "metric", "Δ (a − b)", "interval", "p", "reads"], rows)


def comparison_lines(metrics: dict[str, Any], every: bool = False) -> list[str]:
    """The comparisons table (main metric first) and how many more metrics.json holds; none without comparisons."""
    found = shown_comparisons(metrics, every)
    if not found:
        return []
    lines = comparisons_table(found)
    left = len(metrics.get("comparisons") or []) - len(found)
    if left > 0:
        lines += ["", f"{left} more comparisons (every report row) are in metrics.json's `comparisons` and in "
                      "`python -m pipelines compare OUT`."]
    return lines


def significance_lines(metrics: dict[str, Any], every: bool = False) -> list[str]:
    """The level, the scores with their intervals and the comparisons table (Markdown lines)."""
    said = level_text(metrics)
    found = comparison_lines(metrics, every)
    return ([f"{said}.", ""] if said else []) + scores_table(metrics) + (["", *found] if found else [])


def columns(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every evaluated model's figures by column name: each model plainly, then constrained when that ran."""
    plain, constrained = metrics.get("models") or {}, metrics.get("constrained") or {}
    out: dict[str, dict[str, Any]] = {}
    for m in dict.fromkeys([*plain, *constrained]):
        if m in plain:
            out[m] = plain[m]
        if m in constrained:
            out[m + CONSTRAINED] = constrained[m]
    return out


def gold_types(metrics: dict[str, Any]) -> list[str]:
    """The entity types present in the gold answers (support > 0), sorted."""
    ms = columns(metrics)
    return sorted({t for m in ms for t, v in ms[m]["per_type"].items() if v["support"]})


def render_markdown(metrics: dict[str, Any], examples: Sequence[dict[str, Any]], plots: Sequence[str] = ()) -> str:
    """The report's Markdown (pure): scores side by side, per-type F1, judge, plots, before/after examples."""
    ms = columns(metrics)
    models = list(ms)
    s, d = metrics["settings"], metrics["data"]
    lines = [
        f"# Evaluation: `{metrics['task']}`",
        "",
        (f"- data: `{d['path']}` ({d['n']} records{', first ' + str(d['limit']) if d.get('limit') else ''}), "
         f"sha256 `{d['sha256'][:12]}…`"),
        (f"- server: `{s['base_url']}`; temperature {s['temperature']}, max_tokens {s['max_tokens']} "
         f"({s['max_tokens_from']})"),
        f"- eval spec version {metrics['eval_spec_version']}; scale: {metrics['scale']}",
    ]
    if s.get("parity"):
        p = s["parity"]
        lines.append(f"- prompt parity: identical tokens for {p['records']} records "
                     f"(`{p['tokenizer']}`, template `{p['template']}`)")
    c = s.get("constraint") or {}
    if c.get("kind"):
        lines.append(f"- constrained decoding (`--constrain {c['mode']}`): {c['described']}, enforced by the server "
                     "(vLLM structured outputs); a constrained answer is valid JSON by construction, so the valid-JSON "
                     "and trailing-text rates are meaningful only unconstrained")
        g = c.get("gold_outside_input")
        if g:
            lines.append(f"- gold entities that are not spans of their input (no constrained answer can name them): "
                         f"{g['outside_input']} of {g['gold_entities']}")
    said = level_text(metrics)
    if said:
        lines.append(f"- {said}")
    lines += ["", "## Scores", "", *scores_table(metrics)]
    found = comparison_lines(metrics)
    if found:
        lines += ["", "## Comparisons", "", *found]
    if metrics["kind"] == "ner":
        types = gold_types(metrics)
        if types:
            lines += ["", "## Per-type F1", "", ("Types of the gold answers; types that answers invent count "
                                                  "against precision and are listed in metrics.json."), ""]
            lines += _table(["type", "support", *(f"`{m}`" for m in models)],
                            [[t, max(ms[m]["per_type"].get(t, {}).get("support", 0) for m in models),
                              *(ms[m]["per_type"].get(t, {}).get("f1", 0.0) for m in models)] for t in types])
    if metrics.get("judge"):
        j = metrics["judge"]
        lines += ["", f"## Judged by `{j['judge']}` against `{j['baseline']}`", ""]
        lines += _table(["model", "win rate", "wins", "losses", "ties", "no verdict"],
                        [[f"`{m}`", r["win_rate"], r["wins"], r["losses"], r["ties"], r["invalid"]]
                         for m, r in j["models"].items()])
    for png in plots:
        lines += ["", f"![{png}]({png})"]
    if examples:
        lines += ["", "## Examples", ""]
        for ex in examples:
            lines += [f"### `{ex['id']}`", "", "prompt:", *_block(ex["user"]), "gold:", *_block(ex["gold"])]
            for m, a in ex["answers"].items():
                lines += [f"`{m}`:", *_block(a)]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(metrics: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNG plots into out_dir; their file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed; the report has no plots.", file=sys.stderr)
        return []
    ms = columns(metrics)
    models = list(ms)
    if metrics["kind"] == "ner":
        groups = gold_types(metrics)
        values = {m: [ms[m]["per_type"].get(t, {}).get("f1", 0.0) for t in groups] for m in models}
        name, ylabel, title, ylim = PER_TYPE_PNG, "F1", "per-type F1", (0, 1)
    elif metrics["kind"] == "generation":
        groups = ["bleu_4", "rouge_1", "rouge_2", "rouge_l"]
        values = {m: [ms[m][k] for k in groups] for m in models}
        name, ylabel, title, ylim = SCORES_PNG, "score (percent)", "BLEU-4 and ROUGE", (0, 100)
    else:
        groups = ["accuracy"]
        values = {m: [ms[m]["accuracy"]] for m in models}
        name, ylabel, title, ylim = SCORES_PNG, "accuracy", "accuracy", (0, 1)
    if not groups:
        return []
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(len(models), 1) ** 0.5 + 2), 4))
    for i, m in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values[m], width, label=m)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metrics['task']}: {title}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    return [name]


def write_report(out_dir: str | Path, metrics: dict[str, Any], examples: Sequence[dict[str, Any]]) -> Path:
    """Write OUT/report.md (and its PNGs); its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text(render_markdown(metrics, examples, plot(metrics, out_dir)), encoding="utf-8")
    if examples:
        write_json(out_dir / EXAMPLES, list(examples))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite report.md from an existing metrics.json (without examples): `python -m pipelines eval-report OUT`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines eval-report", description=main.__doc__)
    ap.add_argument("out", help="folder holding metrics.json")
    args = ap.parse_args(argv)
    metrics_path = Path(args.out) / "metrics.json"
    if not metrics_path.exists():
        print(f"report: `{metrics_path}` does not exist: run `make eval` first.", file=sys.stderr)
        return 1
    print(write_report(args.out, json.loads(metrics_path.read_text(encoding="utf-8")), []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
