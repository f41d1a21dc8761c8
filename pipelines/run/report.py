"""The report of one `make all` run: results/<run>/report.md.

It gathers what the stages left in the run folder — the adapters' loss curves and final losses, each
evaluation's metrics.json, plots and predictions, the stage timings — and states whether the demo's
criteria hold. `python -m pipelines run-report results/<run>` rebuilds it at any time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pipelines.common.paths import TRAIN_MANIFEST
from pipelines.eval import tasks
from pipelines.eval.report import CONSTRAINED, EXAMPLES
from pipelines.eval.report import columns as report_columns

# What the demo must show, checked at the end of `make all`: each criterion reads the run's NER task (`ner`)
# and generation task (`gen`), {model: figures} each (a constrained run's as "<model> (constrained)"); `b` is the
# base's served name, `a`/`g` the adapters'.
CRITERIA = [
    ("NER adapter valid-JSON rate ≥ 0.95", lambda ner, gen, b, a, g: 1 - ner[a]["invalid_json_rate"] >= 0.95),
    ("base valid-JSON rate ≤ 0.2", lambda ner, gen, b, a, g: 1 - ner[b]["invalid_json_rate"] <= 0.2),
    ("NER adapter trailing-text rate ≤ 0.05", lambda ner, gen, b, a, g: ner[a]["trailing_text_rate"] <= 0.05),
    ("NER adapter type-F1 ≥ 0.6 and ≥ base + 0.3",
     lambda ner, gen, b, a, g: ner[a]["type_f1"] >= 0.6 and ner[a]["type_f1"] >= ner[b]["type_f1"] + 0.3),
    ("generation adapter ROUGE-L > base", lambda ner, gen, b, a, g: gen[g]["rouge_l"] > gen[b]["rouge_l"]),
    ("NER adapter constrained entity micro-F1 ≥ 0.5 and ≥ 5 × unconstrained",
     lambda ner, gen, b, a, g: ner[a + CONSTRAINED]["micro_f1"] >= max(0.5, 5 * ner[a]["micro_f1"])),
]


def run_tasks(run_dir: Path) -> list[str]:
    """The tasks of a run folder (an `adapters/<task>` or an `eval-<task>`), in the registry's order."""
    found = {p.name for p in (run_dir / "adapters").glob("*") if p.is_dir()}
    found |= {p.name.removeprefix("eval-") for p in run_dir.glob("eval-*") if p.is_dir()}
    return [t for t in tasks.TASKS if t in found]


def by_kind(run_dir: Path, names: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """kind → (task, its metrics.json) for the first evaluated task of each kind."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for t in names:
        m = load_metrics(run_dir, t)
        if m is not None:
            out.setdefault(tasks.get(t).kind, (t, m))
    return out


def load_metrics(run_dir: Path, task: str) -> dict[str, Any] | None:
    path = run_dir / f"eval-{task}" / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def check_criteria(ner: dict[str, Any], gen: dict[str, Any], base: str, ner_adapter: str,
                   gen_adapter: str) -> list[tuple[str, bool]]:
    """Each criterion with whether it holds; `ner`/`gen` map model names to their metrics; the adapters are
    served under their task's name."""
    def holds(fn) -> bool:
        try:
            return bool(fn(ner, gen, base, ner_adapter, gen_adapter))
        except KeyError:  # a figure the run did not produce (e.g. no constrained evaluation)
            return False

    return [(text, holds(fn)) for text, fn in CRITERIA]


def criteria(run_dir: Path, base: str) -> list[tuple[str, bool]]:
    """The criteria of a run folder, or none when it lacks an evaluated NER or generation task."""
    kinds = by_kind(run_dir, run_tasks(run_dir))
    if "ner" not in kinds or "generation" not in kinds:
        return []
    (nt, ner), (gt, gen) = kinds["ner"], kinds["generation"]
    return check_criteria(report_columns(ner), report_columns(gen), base, nt, gt)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "–" if v is None else str(v)


def _table(models: dict[str, dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    rows = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in models.items():
        m = dict(m, valid_json_rate=1 - m["invalid_json_rate"]) if "invalid_json_rate" in m else m
        rows.append(f"| `{name}` | " + " | ".join(_num(m.get(k)) for _, k in columns) + " |")
    return rows


def examples(run_dir: Path, task: str, k: int = 3) -> list[str]:
    """Before/after: the evaluation's own examples (`examples.json`: records where the models answer differently
    first), with the gold answer."""
    path = run_dir / f"eval-{task}" / EXAMPLES
    if not path.exists():
        return []
    out: list[str] = []
    for ex in json.loads(path.read_text(encoding="utf-8"))[:k]:
        out.append(f"**{ex['id']}** — input: {ex['user'].splitlines()[-1] if ex['user'] else ''}")
        out.append("")
        out.append(f"- gold: `{ex['gold']}`")
        out += [f"- `{m}`: `{a[:200].replace(chr(10), ' ')}`" for m, a in ex["answers"].items()]
        out.append("")
    return out


def write(run_dir: Path, base: str) -> Path:
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    names = run_tasks(run_dir)
    lines = [f"# Pipeline run `{run_dir.name}`", ""]

    held = criteria(run_dir, base)
    if held:
        lines += ["## What the adapters learned", "", "| criterion | holds |", "|---|---|"]
        lines += [f"| {t} | {'yes' if ok else '**no**'} |" for t, ok in held]
        lines.append("")

    lines += ["## Training", ""]
    for task in names:
        adapter = run_dir / "adapters" / task
        manifest = adapter / TRAIN_MANIFEST
        if manifest.exists():
            res = json.loads(manifest.read_text(encoding="utf-8")).get("results") or {}
            figures = {k: res[k] for k in ("train_loss", "eval_loss", "train_runtime", "global_step") if k in res}
            lines.append(f"- `{task}` adapter: " + ", ".join(f"{k} {_num(v)}" for k, v in figures.items()))
        for png in sorted(adapter.glob("training_*.png")):
            dst = plots / f"{task}-{png.name}"
            shutil.copy2(png, dst)
            lines += ["", f"![{task} {png.stem}](plots/{dst.name})"]
    lines.append("")

    for task in names:
        metrics, columns = load_metrics(run_dir, task), tasks.get(task).columns
        if not metrics:
            lines += [f"## {task}: not evaluated", ""]
            continue
        lines += [f"## {task} ({metrics['data']['n']} validation records, scale: {metrics['scale']})", ""]
        lines += _table(report_columns(metrics), columns)
        lines.append("")
        for png in sorted((run_dir / f"eval-{task}").glob("*.png")):
            lines += [f"![{task} {png.stem}](eval-{task}/{png.name})", ""]
        lines += [f"Full evaluation report: [eval-{task}/report.md](eval-{task}/report.md)", ""]
        ex = examples(run_dir, task)
        if ex:
            lines += ["### Before / after", "", *ex]

    timings = run_dir / "timings.md"
    if timings.exists():
        lines += ["## Stage times", "", timings.read_text(encoding="utf-8")]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines run-report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="results/<run>")
    ap.add_argument("--base", default="tiny-base", help="served name of the base model (default: %(default)s)")
    args = ap.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        raise SystemExit(f"`{args.run_dir}` is not a run folder; give results/<run> of a `make all` run.")
    print(f"report: {write(Path(args.run_dir), args.base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
