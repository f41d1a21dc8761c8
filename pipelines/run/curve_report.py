"""`make curve`'s outputs beside curve.json: `samples.md` (k validation records, each epoch's answer) and `curve.png`.

Pure but for the files they write: `samples_markdown` and `curve_markdown` turn curve.json's content into text,
`plot` draws the main metric (plain and constrained) and the losses per epoch with matplotlib's Agg backend.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

CURVE_DIR = "curve"  # OUT/curve/ of a training run


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def epoch(v: Any) -> str:
    """An epoch as the Trainer counts it: `3`, `1.5`."""
    return f"{v:g}" if isinstance(v, (int, float)) else _f(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def curve_table(curve: dict[str, Any]) -> list[str]:
    """The curve's markdown table: epoch, step, losses, the main metric plainly and constrained, the best marked."""
    key = curve["main_metric"]
    best = (curve.get("best") or {}).get("checkpoint")
    has_c = any(r.get("constrained") for r in curve["rows"])
    head = ["epoch", "step", "checkpoint", "loss", "eval loss", key, *([f"{key} constrained"] if has_c else []), ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in curve["rows"]:
        mark = "**best**" if r["checkpoint"] == best else ("tied" if r.get("tied_with_best") else "")
        cells = [epoch(r["epoch"]), _f(r["step"]), f"`{r['checkpoint']}`", _f(r["loss"]), _f(r["eval_loss"]),
                 _f((r.get("metrics") or {}).get(key)),
                 *([_f((r.get("constrained") or {}).get(key))] if has_c else []), mark]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def curve_markdown(curve: dict[str, Any]) -> str:
    best = curve.get("best") or {}
    lines = [f"# Curve of `{curve['output_dir']}`: `{curve['task']}`", "",
             f"Every checkpoint scored on `{curve['data']}` ({curve['n']} records); `{curve['command']}` at commit "
             f"{curve.get('commit') or 'unknown'}.", "", *curve_table(curve), ""]
    if best:
        lines.append(f"Best: epoch {epoch(best['epoch'])} (`{best['checkpoint']}`) by {curve['main_metric']}"
                     + (f"; tied with it (p ≥ 0.05): {', '.join(f'`{t}`' for t in curve['ties'])}." if curve.get("ties")
                        else "."))
    return "\n".join(lines) + "\n"


def samples_markdown(curve: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """k fixed validation records: input, gold, and each epoch's answer, whether it parsed and obeyed the format."""
    lines = [f"# Per-epoch answers: `{curve['output_dir']}`", "",
             f"The first {len(samples)} records of `{curve['data']}`, each epoch's checkpoint asked plainly "
             "(`parsed`: the answer is the task's form; `format`: it lies in the task's answer language, the one "
             "constrained decoding enforces).", ""]
    for s in samples:
        lines += [f"## `{s['id']}`", "", "Input:", "", "```text", s["input"], "```", "", f"Gold: `{_cell(s['gold'])}`",
                  "", "| epoch | answer | parsed | format |", "|---|---|---|---|"]
        for a in s["answers"]:
            yes = {True: "yes", False: "no", None: "–"}
            lines.append(f"| {epoch(a['epoch'])} | `{_cell(a['answer'])}` | {yes[a['parsed']]} | {yes[a['obeyed']]} |")
        lines.append("")
    return "\n".join(lines)


def step_markdown(checkpoint: str, samples: list[dict[str, Any]]) -> str:
    """One checkpoint's answers to the sample records: the tracker's text at its step."""
    yes = {True: "yes", False: "no", None: "–"}
    lines = [f"`{checkpoint}`: its answers to the sample records (all epochs: curve/samples.md)", "",
             "| record | gold | answer | parsed | format |", "|---|---|---|---|---|"]
    for s in samples:
        for a in s["answers"]:
            if a["checkpoint"] == checkpoint:
                lines.append(f"| `{s['id']}` | `{_cell(s['gold'])}` | `{_cell(a['answer'])}` | {yes[a['parsed']]} | "
                             f"{yes[a['obeyed']]} |")
    return "\n".join(lines)


def plot(curve: dict[str, Any], path: Path) -> Path | None:
    """curve.png: the main metric (plain, constrained) and the losses per epoch; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("curve: matplotlib is not installed; no curve.png.", file=sys.stderr)
        return None
    key, rows = curve["main_metric"], curve["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for side, style, label in (("metrics", "o-", "plain"), ("constrained", "s--", "constrained")):
        pts = [(r["epoch"], (r.get(side) or {}).get(key)) for r in rows]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            left.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    left.set_xlabel("epoch")
    left.set_ylabel(key)
    left.set_title(f"{curve['task']}: {key} per epoch")
    left.legend()
    for name, style in (("loss", "o-"), ("eval_loss", "s--")):
        pts = [(r["epoch"], r[name]) for r in rows if r.get(name) is not None]
        if pts:
            right.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    right.set_xlabel("epoch")
    right.set_ylabel("loss")
    right.set_title("loss per epoch")
    right.legend()
    fig.suptitle(f"{curve['command']} ({curve.get('commit') or 'unknown commit'})", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
