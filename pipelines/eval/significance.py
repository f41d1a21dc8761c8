"""Significance: bootstrap intervals of one model's figures and paired tests of two models' difference.

Every figure of the evaluation report is a ratio of sums (or a mean) of per-record numbers, so a record's
*sufficient statistics* (`record_stats`) are enough to recompute it on any resample of the records, exactly as
`pipelines.eval.scoring` (and `evaluate.score`, which adds `mean_length` and `truncated_rate`) computes it on
the full sample. The statistics are plain JSON (lists of ints and floats), to be saved beside the predictions.
It is one module because the three kinds' statistics, their metrics and the resampling share one layout of
counts: splitting them would spread that layout over files that must change together.

* `metrics_from_stats`: every metric, on the full sample (floats equal to the scorer's, bit for bit) or on a
  [B, n] matrix of resampled record indices (arrays of B figures), by matrix products over [n, k] counts.
* `bootstrap_intervals`: percentile bootstrap over records.
* `compare`: the difference a - b, its paired bootstrap interval (the same resampled records for both models)
  and the p-value of a two-sided paired approximate randomization test (each record's statistics swapped
  between the models with probability 1/2), p = (hits + 1) / (R + 1).

Statistics layout (`record_stats`), n records, T entity types:

    {"version": 1, "kind": "ner", "n": n, "types": [T names],
     "tp": [[T ints] x n], "fp": [[T ints] x n], "fn": [[T ints] x n],
     "invalid_json": [0|1 x n], "trailing_text": [0|1 x n], "length": [int x n], "truncated": [0|1 x n] | null}
    {"version": 1, "kind": "generation", "n": n, "bleu_4": [float x n], "rouge_1": ..., "rouge_2": ...,
     "rouge_l": ..., "length": [int x n], "reference_length": [int x n], "truncated": ... | null}
    {"version": 1, "kind": "classification", "n": n, "correct": [0|1 x n], "length": [int x n],
     "truncated": ... | null}

NER's other per-record figures follow from the counts: the types an answer names are those with tp + fp > 0,
the gold's those with tp + fn > 0, and a record matches exactly when it is valid JSON with no fp and no fn.
`macro_f1` averages the F1 of the types present in the gold answers *of the (re)sample*, as `score_ner` does.

`truncated_rate` needs the `truncated` flags (finish_reason == "length"); without them it is unavailable and
asking for it is an error. `mean_reference_length` is a property of the data: identical for two models scored
on the same references (which `compare` checks), so `compare` gives it diff 0, interval [0, 0] and p = 1.
Random draws come from `numpy.random.default_rng(seed)` (seed 0 by default: the same figures on a rerun): first
the [resamples, n] bootstrap indices, then (compare) the [permutations, n] swap masks. The last two draws are
kept (read-only, about 11 MB each at 1000 x 1343), so the models and pairs of one report share them.
Errors are ValueError, one sentence each.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000
DEFAULT_PERMUTATIONS = 1000
DEFAULT_SEED = 0
BOOTSTRAP_METHOD = "percentile bootstrap"
COMPARE_METHOD = "paired bootstrap + approximate randomization"
STATS_VERSION = 1
TOLERANCE = 1e-12  # |diff_perm| >= |diff_obs| - TOLERANCE counts as a hit (float ties)

KINDS = ("ner", "generation", "classification")
METRICS: dict[str, tuple[str, ...]] = {
    "ner": ("micro_f1", "precision", "recall", "macro_f1", "type_f1", "exact_match", "invalid_json_rate",
            "valid_json_rate", "trailing_text_rate", "truncated_rate", "mean_length"),
    "generation": ("bleu_4", "rouge_1", "rouge_2", "rouge_l", "truncated_rate", "mean_length",
                   "mean_reference_length"),
    "classification": ("accuracy", "truncated_rate", "mean_length"),
}
#: Metrics that are a property of the data, not of the model: no difference to test between two models.
DATA_METRICS = frozenset({"mean_reference_length"})
SIMILARITY_KEYS = ("bleu_4", "rouge_1", "rouge_2", "rouge_l")
#: Metric -> per-record column whose mean it is.
_MEANS: dict[str, dict[str, str]] = {
    "ner": {"exact_match": "exact", "invalid_json_rate": "invalid_json", "trailing_text_rate": "trailing_text",
            "truncated_rate": "truncated", "mean_length": "length"},
    "generation": {**{k: k for k in SIMILARITY_KEYS}, "truncated_rate": "truncated", "mean_length": "length",
                   "mean_reference_length": "reference_length"},
    "classification": {"accuracy": "correct", "truncated_rate": "truncated", "mean_length": "length"},
}
_FIELDS: dict[str, tuple[str, ...]] = {
    "ner": ("tp", "fp", "fn", "invalid_json", "trailing_text", "length"),
    "generation": (*SIMILARITY_KEYS, "length", "reference_length"),
    "classification": ("correct", "length"),
}

Layout = dict[str, slice]


# ---------------------------------------------------------------- per-record statistics


def record_stats(
    kind: str,
    predictions: Sequence[str],
    golds: Sequence[str],
    *,
    labels: Sequence[str] = (),
    truncated: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The per-record sufficient statistics of one model's answers (JSON-serialisable; layout in the docstring).

    `labels` (NER): entity types to give a column even when no answer or gold names them. `truncated`: one flag
    per record, finish_reason == "length"; without it `truncated_rate` cannot be computed.
    """
    _check_kind(kind)
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers.")
    if truncated is not None and len(truncated) != len(golds):
        raise ValueError(f"{len(truncated)} truncation flags for {len(golds)} records.")
    if kind == "ner":
        body = _ner_stats(predictions, golds, labels)
    elif kind == "generation":
        body = _generation_stats(predictions, golds)
    else:
        body = {"correct": [int(p.strip() == g.strip()) for p, g in zip(predictions, golds)]}
    body["length"] = [len(p) for p in predictions]
    flags = None if truncated is None else [int(bool(t)) for t in truncated]
    return {"version": STATS_VERSION, "kind": kind, "n": len(golds), **body, "truncated": flags}


def _ner_stats(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Per record and type (tp, fp, fn), plus invalid-JSON and trailing-text flags.

    Types are ordered as `score_ner` first meets them (each record's answer, then its gold), then `labels`:
    the macro average then sums in the scorer's order, so the full-sample figure is the scorer's bit for bit.
    """
    from pipelines.eval.scoring import parse_entities

    parsed = []
    order: dict[str, int] = {}
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        g = parse_entities(gold)
        if not g.valid_json:
            raise ValueError(f"gold answer {i} is not a JSON object or array: {gold[:80]!r}.")
        p = parse_entities(pred)
        for t, _ in (*p.entities, *g.entities):
            order.setdefault(t, len(order))
        parsed.append((p, g))
    for t in labels:
        order.setdefault(t, len(order))
    counts = {name: [[0] * len(order) for _ in parsed] for name in ("tp", "fp", "fn")}
    for row, (p, g) in enumerate(parsed):
        for name, pairs in (("tp", p.entities & g.entities), ("fp", p.entities - g.entities),
                            ("fn", g.entities - p.entities)):
            for t, _ in pairs:
                counts[name][row][order[t]] += 1
    return {"types": list(order), **counts,
            "invalid_json": [int(not p.valid_json) for p, _ in parsed],
            "trailing_text": [int(p.trailing_text) for p, _ in parsed]}


def _generation_stats(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Per-record BLEU-4 and ROUGE-1/2/L from `scoring.similarity` (what `score_generation` averages)."""
    from pipelines.eval import scoring

    scores = [scoring.similarity(p, r) for p, r in zip(predictions, references)]
    return {**{k: [s[k] for s in scores] for k in SIMILARITY_KEYS},
            "reference_length": [len(r) for r in references]}


# ---------------------------------------------------------------- checks


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind `{kind}`: expected one of {', '.join(KINDS)}.")


def _arrays(kind: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """`stats` checked (statistics of `kind`, one entry a record) and converted to numpy arrays, once."""
    _check_kind(kind)
    if stats.get("kind") != kind:
        raise ValueError(f"the statistics are of kind `{stats.get('kind')}`, not `{kind}`.")
    n = stats.get("n")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the statistics have no valid record count `n` (got {n!r}).")
    types = list(stats.get("types", ()))
    out: dict[str, Any] = {"n": n, "types": types, "truncated": None}
    for name in (*_FIELDS[kind], "truncated"):
        if name == "truncated" and stats.get(name) is None:
            continue
        try:
            value = np.asarray(stats[name], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            value = None
        shape = (n, len(types)) if name in ("tp", "fp", "fn") else (n,)
        if value is None or (value.shape != shape and not (n == 0 and value.size == 0)):
            raise ValueError(f"the statistics' `{name}` field is missing or is not {' x '.join(map(str, shape))}.")
        out[name] = value.reshape(shape)
    return out


def _check_metrics(kind: str, metrics: Sequence[str] | None, *stats: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics asked for (all those the statistics support when None), each known and supported."""
    has_truncated = all(s.get("truncated") is not None for s in stats)
    if metrics is None:
        return tuple(m for m in METRICS[kind] if has_truncated or m != "truncated_rate")
    metrics = tuple(metrics)
    for m in metrics:
        if m not in METRICS[kind]:
            raise ValueError(f"unknown {kind} metric `{m}`: expected one of {', '.join(METRICS[kind])}.")
        if m == "truncated_rate" and not has_truncated:
            raise ValueError("`truncated_rate` needs truncation flags: pass `truncated=` to record_stats.")
    return metrics


def _check_resampling(level: float, *counts: tuple[str, int]) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must lie strictly between 0 and 1 (got {level}).")
    for name, value in counts:
        if int(value) != value or value < 1:
            raise ValueError(f"the number of {name} must be a positive integer (got {value}).")


# ---------------------------------------------------------------- statistics as a matrix, metrics from sums


def _columns(kind: str, arrays: Mapping[str, Any], types: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Per-record columns (arrays [n] or [n, T]) that the metrics are ratios of sums of."""
    cols: dict[str, np.ndarray] = {}
    if kind == "ner":
        tp, fp, fn = (_typed(arrays, name, types) for name in ("tp", "fp", "fn"))
        named, present = tp + fp > 0, tp + fn > 0
        cols = {"tp": tp, "npred": tp + fp, "ngold": tp + fn, "ttp": (named & present).sum(1),
                "tpred": named.sum(1), "tgold": present.sum(1),
                "exact": (arrays["invalid_json"] == 0) & (fp == 0).all(1) & (fn == 0).all(1)}
    for name in (*_FIELDS[kind], "truncated"):
        if name not in ("tp", "fp", "fn") and arrays[name] is not None:
            cols[name] = arrays[name]
    return cols


def _typed(arrays: Mapping[str, Any], name: str, types: Sequence[str] | None) -> np.ndarray:
    """The [n, T] counts `name`, with columns reordered (and zero-filled) to `types` when given."""
    counts = arrays[name]
    if types is None or list(types) == arrays["types"]:
        return counts
    out = np.zeros((arrays["n"], len(types)))
    where = {t: j for j, t in enumerate(types)}
    for j, t in enumerate(arrays["types"]):
        out[:, where[t]] = counts[:, j]
    return out


def _matrix(kind: str, arrays: Mapping[str, Any], types: Sequence[str] | None = None) -> tuple[np.ndarray, Layout]:
    """The columns side by side: X [n, k] (float64; counts stay exact) and where each column lies."""
    layout: Layout = {}
    parts: list[np.ndarray] = []
    at = 0
    for name, col in _columns(kind, arrays, types).items():
        col = col.astype(np.float64)
        col = col[:, None] if col.ndim == 1 else col
        layout[name] = slice(at, at + col.shape[1])
        parts.append(col)
        at += col.shape[1]
    return np.concatenate(parts, axis=1), layout


def _sequential_sum(x: np.ndarray) -> np.ndarray:
    """Column sums [1, k] added record by record, as the scorer's Python loops add them (same float rounding)."""
    if x.shape[0] == 0:
        return np.zeros((1, x.shape[1]))
    return np.cumsum(x, axis=0)[-1:]


def _weights(index: np.ndarray, n: int) -> np.ndarray:
    """How often each record occurs in each resample: [B, m] indices -> [B, n] counts (float64)."""
    b = index.shape[0]
    flat = (index + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


@functools.lru_cache(maxsize=2)
def _bootstrap_draw(seed: int, n: int, resamples: int) -> tuple[np.ndarray, Mapping[str, Any]]:
    """Resample weights [resamples, n] from `default_rng(seed).integers(0, n, (resamples, n))`, and the
    generator's state after that draw. Cached (read-only): every model and pair with one seed shares the draw."""
    rng = np.random.default_rng(seed)
    weights = _weights(rng.integers(0, n, size=(resamples, n)), n)
    weights.flags.writeable = False
    return weights, rng.bit_generator.state


@functools.lru_cache(maxsize=2)
def _swap_draw(seed: int, n: int, resamples: int, permutations: int) -> np.ndarray:
    """Swap masks [permutations, n] (1.0: swap), `random() < 0.5` drawn right after the bootstrap indices."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = _bootstrap_draw(seed, n, resamples)[1]
    swap = (rng.random((permutations, n)) < 0.5).astype(np.float64)
    swap.flags.writeable = False
    return swap


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den elementwise, 0.0 where den is 0 (the scorer's `x / n if n else 0.0`)."""
    top, bottom = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(top, bottom, out=np.zeros(top.shape), where=bottom != 0)


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`scoring.prf` on arrays: precision, recall, F1 with the same operations in the same order."""
    p, r = _div(tp, n_pred), _div(tp, n_gold)
    return p, r, _div(2 * p * r, p + r)


def _ner_metrics(tot: np.ndarray, lay: Layout, wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """The entity-level figures from summed counts tot [B, k]."""
    out: dict[str, np.ndarray] = {}
    tp, npred, ngold = tot[:, lay["tp"]], tot[:, lay["npred"]], tot[:, lay["ngold"]]
    if {"micro_f1", "precision", "recall"} & set(wanted):
        p, r, f = _prf(tp.sum(1), npred.sum(1), ngold.sum(1))
        out.update(micro_f1=f, precision=p, recall=r)
    if "macro_f1" in wanted:
        f_type = _prf(tp, npred, ngold)[2]
        present = ngold > 0
        total = np.zeros(tot.shape[0])
        for j in range(f_type.shape[1]):  # type by type, in the scorer's order: the same float rounding
            total = total + np.where(present[:, j], f_type[:, j], 0.0)
        out["macro_f1"] = _div(total, present.sum(1))
    if "type_f1" in wanted:
        out["type_f1"] = _prf(tot[:, lay["ttp"]][:, 0], tot[:, lay["tpred"]][:, 0], tot[:, lay["tgold"]][:, 0])[2]
    return out


def _metrics(kind: str, tot: np.ndarray, lay: Layout, n: int, wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """Every metric in `wanted` from column sums tot [B, k] over resamples of n records: arrays [B]."""
    out = _ner_metrics(tot, lay, wanted) if kind == "ner" else {}
    for metric in wanted:
        if metric in _MEANS[kind]:
            out[metric] = _div(tot[:, lay[_MEANS[kind][metric]]][:, 0], n)
        elif metric == "valid_json_rate":
            out[metric] = 1 - _div(tot[:, lay["invalid_json"]][:, 0], n)
    return {m: out[m] for m in wanted}


# ---------------------------------------------------------------- public API


def metrics_from_stats(
    kind: str, stats: Mapping[str, Any], index: Any = None, metrics: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every metric (or those in `metrics`) recomputed from the statistics.

    `index` None: the full sample, {metric: float}, equal to the scorer's figures. `index` a [B, m] array of
    record indices (one resample a row; a 1-D array is one resample): {metric: float64 array [B]}.
    """
    arrays = _arrays(kind, stats)
    wanted = _check_metrics(kind, metrics, stats)
    if index is None:
        return _full_metrics(kind, arrays, wanted)
    n = arrays["n"]
    idx = np.asarray(index)
    idx = idx[None, :] if idx.ndim == 1 else idx
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"the index must be a [B, m] array of record indices (got shape {idx.shape}).")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"the index refers to records outside 0..{n - 1}.")
    x, lay = _matrix(kind, arrays)
    return _metrics(kind, _weights(idx, n) @ x, lay, idx.shape[1], wanted)


def _full_metrics(kind: str, arrays: Mapping[str, Any], wanted: Sequence[str]) -> dict[str, float]:
    """The full-sample figures, summed record by record in the statistics' own type order (the scorer's)."""
    x, lay = _matrix(kind, arrays)
    return {m: float(v[0]) for m, v in _metrics(kind, _sequential_sum(x), lay, arrays["n"], wanted).items()}


def bootstrap_intervals(
    kind: str,
    stats: Mapping[str, Any],
    metrics: Sequence[str] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, dict[str, float]]:
    """{metric: {"low", "high"}}: percentile bootstrap interval at `level`, over records resampled with
    replacement (indices drawn by `numpy.random.default_rng(seed).integers(0, n, (resamples, n))`)."""
    arrays = _arrays(kind, stats)
    wanted = _check_metrics(kind, metrics, stats)
    _check_resampling(level, ("resamples", resamples))
    n = arrays["n"]
    if n == 0:
        raise ValueError("there are no records to resample.")
    x, lay = _matrix(kind, arrays)
    weights = _bootstrap_draw(int(seed), n, int(resamples))[0]
    values = _metrics(kind, weights @ x, lay, n, wanted)
    return _intervals(values, level)


def _intervals(values: Mapping[str, np.ndarray], level: float) -> dict[str, dict[str, float]]:
    """{metric: {"low", "high"}}: the (1 - level) / 2 and (1 + level) / 2 quantiles of each metric's values [B]."""
    alpha = 1.0 - level
    names = list(values)
    if not names:
        return {}
    bounds = np.quantile(np.stack([values[m] for m in names]), [alpha / 2, 1 - alpha / 2], axis=1)
    return {m: {"low": float(bounds[0, i]), "high": float(bounds[1, i])} for i, m in enumerate(names)}


def compare(
    kind: str,
    stats_a: Mapping[str, Any],
    stats_b: Mapping[str, Any],
    metrics: Sequence[str] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """Model a against model b on the same records, one dict a metric:
    {metric, diff (a - b, full sample), low, high (paired bootstrap interval of a - b), p_value, method,
    resamples, permutations}.

    Draws, from `numpy.random.default_rng(seed)`: first the [resamples, n] bootstrap indices (shared by both
    models and all metrics), then the [permutations, n] swap masks (`random() < 0.5`). p = (hits + 1) / (R + 1),
    hits counting |diff_perm| >= |diff_obs| - TOLERANCE. `mean_reference_length` (data, not model) gets diff 0,
    [0, 0] and p = 1. Same data is checked where the statistics show it: NER gold entity counts per record and
    type, generation reference lengths (classification statistics carry nothing of the labels).
    """
    arrays_a, arrays_b = _arrays(kind, stats_a), _arrays(kind, stats_b)
    n = arrays_a["n"]
    if arrays_b["n"] != n:
        raise ValueError(f"model a has {n} records and model b {arrays_b['n']}: compare them on the same records.")
    wanted = _check_metrics(kind, metrics, stats_a, stats_b)
    _check_resampling(level, ("resamples", resamples), ("permutations", permutations))
    if n == 0:
        raise ValueError("there are no records to compare.")
    types = list(dict.fromkeys([*arrays_a["types"], *arrays_b["types"]])) if kind == "ner" else None
    xa, lay = _matrix(kind, arrays_a, types)
    xb, _ = _matrix(kind, arrays_b, types)
    _check_same_data(kind, xa, xb, lay)
    full_a, full_b = _full_metrics(kind, arrays_a, wanted), _full_metrics(kind, arrays_b, wanted)
    weights = _bootstrap_draw(int(seed), n, int(resamples))[0]
    both = weights @ np.concatenate([xa, xb], axis=1)  # one product for both models: [B, 2k]
    k = xa.shape[1]
    boot_a, boot_b = _metrics(kind, both[:, :k], lay, n, wanted), _metrics(kind, both[:, k:], lay, n, wanted)
    intervals = _intervals({m: boot_a[m] - boot_b[m] for m in wanted}, level)
    p_values = _randomization(kind, xa, xb, lay, wanted, _swap_draw(int(seed), n, int(resamples), int(permutations)))
    return [
        {"metric": m, "diff": full_a[m] - full_b[m], **intervals[m],
         "p_value": p_values[m], "method": COMPARE_METHOD, "resamples": int(resamples),
         "permutations": int(permutations)}
        for m in wanted
    ]


def _check_same_data(kind: str, xa: np.ndarray, xb: np.ndarray, lay: Layout) -> None:
    """Two models' statistics must come from the same gold answers (NER) or references (generation)."""
    column = {"ner": "ngold", "generation": "reference_length"}.get(kind)
    if column and not np.array_equal(xa[:, lay[column]], xb[:, lay[column]]):
        raise ValueError("the two models' statistics were not computed on the same gold answers.")


def _randomization(
    kind: str, xa: np.ndarray, xb: np.ndarray, lay: Layout, wanted: Sequence[str], swap: np.ndarray
) -> dict[str, float]:
    """Two-sided paired approximate randomization: p-value of each metric's difference given swap masks [R, n].

    A swap of record i moves its statistics from a to b and back, so the permuted sums are
    sum_a + swap @ (x_b - x_a) and sum_b - swap @ (x_b - x_a); the observed ones are the same with no swap.
    """
    n = xa.shape[0]
    sum_a, sum_b = _sequential_sum(xa), _sequential_sum(xb)
    moved = swap @ (xb - xa)
    obs_a, obs_b = _metrics(kind, sum_a, lay, n, wanted), _metrics(kind, sum_b, lay, n, wanted)
    perm_a, perm_b = _metrics(kind, sum_a + moved, lay, n, wanted), _metrics(kind, sum_b - moved, lay, n, wanted)
    out = {}
    for m in wanted:
        observed = abs(float(obs_a[m][0] - obs_b[m][0]))
        hits = int(np.count_nonzero(np.abs(perm_a[m] - perm_b[m]) >= observed - TOLERANCE))
        out[m] = (hits + 1) / (swap.shape[0] + 1)
    return out
