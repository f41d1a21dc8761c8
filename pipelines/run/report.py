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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.common.errors import PipelinesError
from pipelines.common.io import read_json
from pipelines.common.paths import TRAIN_MANIFEST
from pipelines.eval import tasks
from pipelines.eval.compare import oriented
from pipelines.eval.report import CONSTRAINED, EXAMPLES, difference, figure
from pipelines.eval.report import columns as report_columns
from pipelines.run.curve_report import CURVE_DIR, curve_table, epoch

#: What "better" means in a criterion: the difference's interval (metrics.json's `comparisons`) lies above 0.
BETTER = "better means the 95% interval of the difference (paired bootstrap over the records) lies above 0"


class Verdict(NamedTuple):
    text: str
    ok: bool
    detail: str  # the figures it was decided on, with their intervals


@dataclass(frozen=True)
class Evidence:
    """What the criteria read: the run's NER and generation metrics.json, the base's served name (`b`) and the
    adapters' (`a` NER, `g` generation; each served under its task's name)."""

    ner: Mapping[str, Any]
    gen: Mapping[str, Any]
    b: str
    a: str
    g: str

    def _side(self, kind: str) -> Mapping[str, Any]:
        return self.ner if kind == "ner" else self.gen

    def at(self, kind: str, entry: str, metric: str, bound: float, most: bool = False) -> tuple[bool, str]:
        """`entry`'s `metric` at least (at most) `bound`, and the figure with its interval."""
        m = report_columns(dict(self._side(kind)))[entry]
        value = 1 - m["invalid_json_rate"] if metric == "valid_json_rate" else m[metric]
        ok = value <= bound if most else value >= bound
        return ok, f"`{entry}` {metric} {figure(metric, value, (m.get('intervals') or {}).get(metric))}"

    def better(self, kind: str, a: str, b: str, metric: str) -> tuple[bool, str]:
        """`a` better than `b` on `metric`: the interval of a - b above 0."""
        c = oriented(self._side(kind).get("comparisons") or [], a, b, metric)
        if c is None:
            return False, f"no comparison of `{a}` with `{b}` in metrics.json (eval spec < 3: evaluate again)"
        diff, interval, p = difference(c)
        return c["low"] > 0, f"Δ {metric} `{a}` − `{b}` {diff} {interval}, p {p}"


def _both(*checks: tuple[bool, str]) -> tuple[bool, str]:
    return all(ok for ok, _ in checks), "; ".join(detail for _, detail in checks)


# What the demo must show, checked at the end of `make all`; entries are named as the evaluation report names them
# (a constrained run's as "<model> (constrained)").
CRITERIA: list[tuple[str, Callable[[Evidence], tuple[bool, str]]]] = [
    ("NER adapter valid-JSON rate ≥ 0.95", lambda e: e.at("ner", e.a, "valid_json_rate", 0.95)),
    ("base valid-JSON rate ≤ 0.2", lambda e: e.at("ner", e.b, "valid_json_rate", 0.2, most=True)),
    ("NER adapter trailing-text rate ≤ 0.05", lambda e: e.at("ner", e.a, "trailing_text_rate", 0.05, most=True)),
    ("NER adapter type-F1 ≥ 0.6 and better than the base",
     lambda e: _both(e.at("ner", e.a, "type_f1", 0.6), e.better("ner", e.a, e.b, "type_f1"))),
    ("generation adapter ROUGE-L better than the base", lambda e: e.better("gen", e.g, e.b, "rouge_l")),
    ("NER adapter constrained entity micro-F1 ≥ 0.5 and better than unconstrained",
     lambda e: _both(e.at("ner", e.a + CONSTRAINED, "micro_f1", 0.5),
                     e.better("ner", e.a + CONSTRAINED, e.a, "micro_f1"))),
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


def check_criteria(ner: Mapping[str, Any], gen: Mapping[str, Any], base: str, ner_adapter: str,
                   gen_adapter: str) -> list[Verdict]:
    """Each criterion, whether it holds and on which figures; `ner`/`gen` are the tasks' metrics.json; the adapters
    are served under their task's name."""
    evidence = Evidence(ner, gen, base, ner_adapter, gen_adapter)

    def verdict(text: str, fn: Callable[[Evidence], tuple[bool, str]]) -> Verdict:
        try:
            ok, detail = fn(evidence)
        except KeyError as e:  # a figure the run did not produce (e.g. no constrained evaluation)
            return Verdict(text, False, f"not evaluated ({e})")
        return Verdict(text, bool(ok), detail)

    return [verdict(text, fn) for text, fn in CRITERIA]


def criteria(run_dir: Path, base: str) -> list[Verdict]:
    """The criteria of a run folder, or none when it lacks an evaluated NER or generation task."""
    kinds = by_kind(run_dir, run_tasks(run_dir))
    if "ner" not in kinds or "generation" not in kinds:
        return []
    (nt, ner), (gt, gen) = kinds["ner"], kinds["generation"]
    return check_criteria(ner, gen, base, nt, gt)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "–" if v is None else str(v)


def _table(models: dict[str, dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    """One row a model; each figure with its interval where metrics.json has one."""
    rows = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in models.items():
        m = dict(m, valid_json_rate=1 - m["invalid_json_rate"]) if "invalid_json_rate" in m else m
        bounds = m.get("intervals") or {}
        rows.append(f"| `{name}` | " + " | ".join(figure(k, m.get(k), bounds.get(k)) for _, k in columns) + " |")
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


def curve_lines(run_dir: Path, task: str) -> list[str]:
    """The adapter's curve (`make curve`, a stage of `make all` for the NER adapter): a row per epoch's checkpoint,
    the best marked, and its plot."""
    folder = run_dir / "adapters" / task / CURVE_DIR
    curve = read_json(folder / "curve.json")
    if not isinstance(curve, dict) or not curve.get("rows"):
        return []
    best = curve.get("best") or {}
    lines = ["", f"### `{task}`: every epoch's checkpoint ({curve['n']} validation records, `make curve`)", "",
             *curve_table(curve), ""]
    if best:
        lines.append(f"Best epoch: {epoch(best['epoch'])} (`{best['checkpoint']}`) by {curve['main_metric']}"
                     + (f"; tied with it (p ≥ 0.05): {', '.join(f'`{t}`' for t in curve['ties'])}." if curve.get("ties")
                        else "."))
    if (folder / "curve.png").is_file():
        lines += ["", f"![{task} curve](adapters/{task}/{CURVE_DIR}/curve.png)"]
    lines += ["", f"Per-epoch answers: [adapters/{task}/{CURVE_DIR}/samples.md](adapters/{task}/{CURVE_DIR}/samples.md)"]
    return lines


def write(run_dir: Path, base: str) -> Path:
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    names = run_tasks(run_dir)
    lines = [f"# Pipeline run `{run_dir.name}`", ""]

    held = criteria(run_dir, base)
    if held:
        lines += ["## What the adapters learned", "", f"Figures with their 95% intervals; {BETTER}.", "",
                  "| criterion | holds | on |", "|---|---|---|"]
        lines += [f"| {v.text} | {'yes' if v.ok else '**no**'} | {v.detail} |" for v in held]
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
        lines += curve_lines(run_dir, task)
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
        raise PipelinesError(f"`{args.run_dir}` is not a run folder; give results/<run> of a `make all` run.")
    print(f"report: {write(Path(args.run_dir), args.base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
