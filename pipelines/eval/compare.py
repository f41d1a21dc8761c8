"""Intervals and comparisons of an evaluation, and the `compare` command that recomputes them offline.

    python -m pipelines compare RESULT_DIR [--resamples N] [--seed S] [--level L] [--json]

The evaluator saves each model's per-record statistics (`pipelines.eval.significance.record_stats`) beside its
predictions, `OUT/<model dir>/stats.json` (`{"plain": …, "constrained": …}` with the data's sha256), and puts
into metrics.json each entry's bootstrap `intervals` and one `comparisons` entry per pair of entries and report
row. This module is the glue between the evaluator and the pure `significance` module: entries are named as the
report names them (`<model>` and `<model> (constrained)`), in the report's order; in a pair the later entry is
`a` and the earlier `b`, so `diff` = a - b reads "adapter - base" and "constrained - plain". The significance
module's ValueError becomes an EvalError (one sentence). `compare RESULT_DIR` reads only those files: the same
settings give the same figures, bit for bit, without a server.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.io import read_json, write_json
from pipelines.eval import EvalError, significance, tasks
from pipelines.eval.predictions import model_dir_name
from pipelines.eval.report import CONSTRAINED

STATS_FILE = "stats.json"
#: The first eval spec whose result folders hold the per-record statistics.
FIRST_SPEC_WITH_STATS = 3
#: p below this: the two entries are told apart (the leaderboard's ties, the report's wording).
ALPHA = 0.05
#: metrics.json's section of each pass (the evaluator's `Pass` values) and the suffix of its entries' names.
SECTIONS = {"plain": ("models", ""), "constrained": ("constrained", CONSTRAINED)}


@dataclass(frozen=True)
class Resampling:
    """How intervals and comparisons are drawn; the permutations of the randomization test are as many as the
    bootstrap resamples."""

    level: float = significance.DEFAULT_LEVEL
    resamples: int = significance.DEFAULT_RESAMPLES
    seed: int = significance.DEFAULT_SEED

    @property
    def permutations(self) -> int:
        return self.resamples

    def describe(self) -> dict[str, Any]:
        """metrics.json's `settings.intervals`."""
        return {"level": self.level, "resamples": self.resamples, "seed": self.seed,
                "method": significance.BOOTSTRAP_METHOD, "permutations": self.permutations,
                "compare_method": significance.COMPARE_METHOD}

    @classmethod
    def from_settings(cls, described: Mapping[str, Any]) -> Resampling:
        return cls(float(described["level"]), int(described["resamples"]), int(described["seed"]))


def _checked(call, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ValueError as e:
        raise EvalError(f"cannot compute the intervals: {str(e).rstrip('.')}.") from None


def stats_path(out: str | Path, model: str) -> Path:
    return Path(out) / model_dir_name(model) / STATS_FILE


def record_stats(spec: tasks.Task, answers: Sequence[str], golds: Sequence[str],
                 finish_reasons: Sequence[str | None]) -> dict[str, Any]:
    """One model's per-record statistics for one pass (JSON)."""
    return _checked(significance.record_stats, spec.kind, answers, golds, labels=spec.labels,
                    truncated=[r == "length" for r in finish_reasons])


def interval_metrics(spec: tasks.Task) -> list[str]:
    """The metrics that get an interval: the report rows, then the run report's columns, that the statistics give."""
    known = significance.METRICS[spec.kind]
    return [m for m in dict.fromkeys([*spec.rows, *(k for _, k in spec.columns)]) if m in known]


def compared_metrics(spec: tasks.Task) -> list[str]:
    """The metrics compared between two entries: the report rows that the statistics give, but those of the data
    (`mean_reference_length`: the same for every model on the same records)."""
    return [m for m in spec.rows if m in significance.METRICS[spec.kind] and m not in significance.DATA_METRICS]


def intervals(spec: tasks.Task, stats: Mapping[str, Any], how: Resampling) -> dict[str, dict[str, float]]:
    """{metric: {"low", "high"}} of one entry."""
    return _checked(significance.bootstrap_intervals, spec.kind, stats, interval_metrics(spec), how.level,
                    how.resamples, how.seed)


def comparisons(spec: tasks.Task, entries: Mapping[str, Mapping[str, Any]], how: Resampling) -> list[dict[str, Any]]:
    """One dict per pair of entries (the later `a`, the earlier `b`) and compared metric, pair by pair."""
    names, out = list(entries), []
    for j, a in enumerate(names):
        for b in names[:j]:
            rows = _checked(significance.compare, spec.kind, entries[a], entries[b], compared_metrics(spec),
                            how.level, how.resamples, how.permutations, how.seed)
            out += [{"a": a, "b": b, **row} for row in rows]
    return out


def oriented(found: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> dict[str, Any] | None:
    """The comparison of `a` against `b` on `metric` (diff = a - b), from either direction; None when absent."""
    for c in found:
        if c.get("metric") != metric:
            continue
        if (c.get("a"), c.get("b")) == (a, b):
            return dict(c)
        if (c.get("a"), c.get("b")) == (b, a):
            return {**c, "a": a, "b": b, "diff": -c["diff"], "low": -c["high"], "high": -c["low"]}
    return None


def mark_ties(rows: list[dict[str, Any]], best: str, metric: str, found: list[dict[str, Any]]) -> list[str]:
    """Give each scored row but the best its comparison with the best on `metric` (`vs_best`: diff = row - best,
    its interval, p) and `tied_with_best`: not told apart from it (p >= ALPHA); the names of the tied rows. Rows
    without a comparison (no figures, metrics.json of eval spec < 3) get None for both."""
    tied = []
    for r in rows:
        c = oriented(found, r["name"], best, metric) if r.get("metrics") is not None and r["name"] != best else None
        r["vs_best"] = {k: c[k] for k in ("diff", "low", "high", "p_value")} if c else None
        r["tied_with_best"] = bool(c["p_value"] >= ALPHA) if c else None
        if r["tied_with_best"]:
            tied.append(r["name"])
    return tied


def entry_name(model: str, pass_name: str) -> str:
    return model + SECTIONS[pass_name][1]


def entry_names(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(entry name, model, pass) of every evaluated entry, in the report's order: each model plainly, then
    constrained."""
    found = {name: metrics.get(section) or {} for name, (section, _) in SECTIONS.items()}
    out = []
    for model in dict.fromkeys([m for figures in found.values() for m in figures]):
        out += [(entry_name(model, name), model, name) for name in SECTIONS if model in found[name]]
    return out


# ---------------------------------------------------------------- the saved statistics


def save_stats(out: str | Path, model: str, passes: Mapping[str, Mapping[str, Any]], data: Mapping[str, Any]) -> Path:
    """Write OUT/<model dir>/stats.json: the statistics of each pass, with the data they were computed on."""
    return write_json(stats_path(out, model), {"version": significance.STATS_VERSION, "model": model,
                                               "data": {"sha256": data["sha256"], "n": data["n"]},
                                               "passes": dict(passes)})


def load_stats(out: str | Path, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{entry name: statistics} of every entry of OUT/metrics.json, from the stats.json files beside the predictions."""
    version = str(metrics.get("eval_spec_version") or "0")
    if not version.isdigit() or int(version) < FIRST_SPEC_WITH_STATS:
        raise EvalError(f"`{out}` holds an evaluation of eval spec {version}, which saved no per-record statistics: "
                        f"rerun the evaluation (`make eval`; saved answers are reused) to get eval spec "
                        f"{FIRST_SPEC_WITH_STATS} or later.")
    found: dict[str, dict[str, Any]] = {}
    for entry, model, name in entry_names(metrics):
        path = stats_path(out, model)
        saved = read_json(path) if path.exists() else None
        stats = ((saved or {}).get("passes") or {}).get(name)
        if stats is None:
            raise EvalError(f"`{path}` holds no {name} statistics of `{model}`: rerun the evaluation into `{out}`.")
        if (saved or {}).get("data", {}).get("sha256") != metrics["data"]["sha256"] or stats.get("n") != \
                metrics["data"]["n"]:
            raise EvalError(f"`{path}` was computed on other data than `{out}/metrics.json` says: rerun the "
                            f"evaluation into `{out}`.")
        found[entry] = stats
    if not found:
        raise EvalError(f"`{out}/metrics.json` lists no evaluated model.")
    return found


def recompute(out: str | Path, how: Resampling | None = None) -> dict[str, Any]:
    """metrics.json of OUT with every entry's intervals, `settings.intervals` and `comparisons` recomputed from the
    saved statistics (with `how`, else the settings it was written with)."""
    path = Path(out) / "metrics.json"
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise EvalError(f"`{path}` does not exist or is not JSON: evaluate into `{out}` first (`make eval`).")
    entries = load_stats(out, metrics)
    spec = tasks.get(metrics["task"])
    how = how or Resampling.from_settings(metrics["settings"]["intervals"])
    new = json.loads(json.dumps(metrics))
    for entry, model, name in entry_names(metrics):
        new[SECTIONS[name][0]][model]["intervals"] = intervals(spec, entries[entry], how)
    new["settings"]["intervals"] = how.describe()
    new["comparisons"] = comparisons(spec, entries, how)
    return new


# ---------------------------------------------------------------- CLI


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"`{text}` must lie strictly between 0 and 1 (e.g. 0.95)")
    return value


def at_least(least: int):
    """An argparse type: a whole number of at least `least` (the eval and compare commands' counts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{text}` is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"`{text}` must be at least {least}")
        return value
    return parse


def add_options(ap: argparse.ArgumentParser, defaults: bool = True) -> None:
    """`--resamples` and `--seed` (the eval command's and this one's)."""
    ap.add_argument("--resamples", type=at_least(1), default=significance.DEFAULT_RESAMPLES if defaults else None,
                    help=f"bootstrap resamples and permutations (default {significance.DEFAULT_RESAMPLES}"
                         + ("" if defaults else ", or the evaluation's own") + ")")
    ap.add_argument("--seed", type=at_least(0), default=significance.DEFAULT_SEED if defaults else None,
                    help=f"seed of the draws (default {significance.DEFAULT_SEED}"
                         + ("" if defaults else ", or the evaluation's own") + ")")


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.eval import report

    ap = argparse.ArgumentParser(prog="python -m pipelines compare", description=__doc__.splitlines()[0])
    ap.add_argument("result_dir", metavar="RESULT_DIR", help="an evaluation's folder (holding metrics.json)")
    add_options(ap, defaults=False)
    ap.add_argument("--level", type=_level, help="confidence level (default: the evaluation's, e.g. 0.95)")
    ap.add_argument("--json", action="store_true", help="print the recomputed metrics.json instead of the tables")
    args = ap.parse_args(argv)
    try:
        saved = read_json(Path(args.result_dir) / "metrics.json")
        was = Resampling.from_settings(((saved or {}).get("settings") or {}).get("intervals") or
                                       Resampling().describe())
        how = Resampling(args.level if args.level is not None else was.level,
                         args.resamples if args.resamples is not None else was.resamples,
                         args.seed if args.seed is not None else was.seed)
        metrics = recompute(args.result_dir, how)
    except EvalError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False, indent=2))
    else:
        print("\n".join(report.significance_lines(metrics, every=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
