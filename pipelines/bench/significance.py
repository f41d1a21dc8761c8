"""Benchmark: the evaluator's intervals and paired tests on a CLUENER-sized evaluation (target: under 2 s).

What `make eval` adds to every run (`pipelines.eval.compare`: bootstrap intervals of every metric of every entry
and the paired bootstrap + approximate randomization test of every pair): 1,343 records (CLUENER's validation
split), 5 models and their 10 pairs, NER with its 10 types, 1,000 resamples and 1,000 permutations. The answers
are synthetic (seeded): gold entity sets drawn from the CLUENER types, each model keeping a share of the gold
entities, adding a wrong one now and then, sometimes answering with no JSON or trailing text. The time is the
statistics' only, from the per-record statistics that the evaluator saves (`stats.json`) to the figures.
There is no "theirs": the seeds print point figures. `ratio` is the target's seconds / ours (above 1: faster).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from pipelines.bench import measure

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "1"
TARGET_S = 2.0
FULL = {"records": 1343, "models": 5}
QUICK = {"records": 200, "models": 3}
TEXTS = ("叶老桂", "浙商银行", "台湾", "彭小军", "北京", "中国银行", "魔兽世界", "红楼梦", "国务院", "曼联")


def synthetic(records: int, models: int, seed: int = 1) -> tuple[list[str], dict[str, list[str]]]:
    """Gold answers and the answers of `models` models of rising skill (pure, seeded)."""
    from pipelines.data.converters import CLUENER_TYPES

    rnd = random.Random(seed)

    def gold() -> str:
        found: dict[str, list[str]] = {}
        for _ in range(rnd.randint(0, 4)):
            found.setdefault(rnd.choice(CLUENER_TYPES), []).append(rnd.choice(TEXTS) + str(rnd.randint(0, 3)))
        return json.dumps(found, ensure_ascii=False)

    def answer(g: str, skill: float) -> str:
        if rnd.random() < 0.05:
            return "我不知道"
        out = {t: [x for x in v if rnd.random() < skill] for t, v in json.loads(g).items()}
        if rnd.random() < 0.3:
            out.setdefault(rnd.choice(CLUENER_TYPES), []).append(rnd.choice(TEXTS))
        return json.dumps(out, ensure_ascii=False) + ("\n好的" if rnd.random() < 0.1 else "")

    golds = [gold() for _ in range(records)]
    return golds, {f"model-{k}": [answer(g, 0.4 + 0.1 * k) for g in golds] for k in range(models)}


def once(stats: dict[str, Any]) -> dict[str, float]:
    from pipelines.eval import compare, tasks

    spec, how = tasks.get("cluener"), compare.Resampling()
    t0 = time.perf_counter()
    for s in stats.values():
        compare.intervals(spec, s, how)
    t1 = time.perf_counter()
    pairs = compare.comparisons(spec, stats, how)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "intervals_seconds": t1 - t0, "comparisons_seconds": t2 - t1,
            "comparison_rows": float(len(pairs))}


def bench(work: Path, *, repeats: int, quick: bool, echo=print) -> dict[str, Any]:
    from pipelines.eval import compare, tasks

    size = QUICK if quick else FULL
    golds, answers = synthetic(size["records"], size["models"])
    spec = tasks.get("cluener")
    stats = {m: json.loads(json.dumps(compare.record_stats(spec, a, golds, [None] * len(a))))
             for m, a in answers.items()}
    echo(f"significance: {size['records']} records, {size['models']} models, {repeats} repeat(s)")
    runs = []
    for i in range(repeats):
        r = once(stats)
        runs.append(r)
        echo(f"significance: repeat {i + 1}/{repeats}: {r['seconds']:.2f} s")
    summary = measure.summarise_runs(runs)
    how = compare.Resampling()
    result = measure.envelope("significance", quick=quick, repeats=repeats, settings={
        **size, "pairs": size["models"] * (size["models"] - 1) // 2, "task": "cluener", "resamples": how.resamples,
        "permutations": how.permutations, "level": how.level, "data": "synthetic, seeded (pipelines/bench/significance.py)",
    })
    seconds = measure.median_of(summary, "seconds")
    result.update({"ours": summary, "runs": runs, "target_seconds": TARGET_S,
                   "ratio": measure.ratio(TARGET_S, seconds), "met": bool(seconds is not None and seconds < TARGET_S)})
    return result


def render(result: dict[str, Any]) -> str:
    s, st = result["ours"], result["settings"]
    rows = [["all intervals and comparisons, s", measure.spread(s.get("seconds"))],
            ["  intervals of every entry, s", measure.spread(s.get("intervals_seconds"))],
            ["  comparisons of every pair, s", measure.spread(s.get("comparisons_seconds"))],
            ["comparison rows", measure.spread(s.get("comparison_rows"))]]
    return (f"significance: {st['records']} records, {st['models']} models ({st['pairs']} pairs), NER, "
            f"{st['resamples']} resamples, {st['permutations']} permutations\n"
            + measure.table(["figure", "ours (pipelines.eval.compare)"], rows)
            + f"\ntarget < {result['target_seconds']} s: {'met' if result['met'] else 'not met'}")
