"""Benchmark: requests/s through vllm-router before 2 replicas against one server directly, on the same cores.

The same N CLUENER prompts of the tiny base, greedy, exactly `max_tokens` new tokens each (`ignore_eos`), sent by
the evaluator's own send path (`pipelines.bench.eval`'s driver) at each concurrency. "theirs" is one `vllm serve`
with every usable core (what `make serve` runs); "ours" is `replicas: 2` (`make serve REPLICAS=2`): two servers
with the cores split between them behind vllm-router, started through the same launcher. The two topologies run
one after the other, never side by side. `ratio` = router prompts/s / direct prompts/s at the higher concurrency.

On a 2-core machine the figure is the router's cost (an extra hop, two engines each with half the threads):
the point there is correctness (failover, tests/serve/test_replicas.py). On GPUs each replica has its own GPUs
and the figure is scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.bench import measure
from pipelines.bench.data import prepare
from pipelines.bench.eval import eval_records, fixed_requests
from pipelines.common.paths import TINY_BASE, rel

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "1"
MAX_TOKENS = 32
FULL_N, FULL_CONCURRENCY = 128, (4, 16)
QUICK_N, QUICK_CONCURRENCY = 16, (8,)
WARMUP = 4
REPLICAS = 2
MODEL = "tiny-base"


def serve_config(replicas: int):
    from pipelines.serve.config import from_dict

    return from_dict({"model": str(Path(TINY_BASE)), "served_model_name": MODEL, "max_model_len": 1024,
                      "dtype": "float32", "cpu_kvcache_space": 1, "startup_timeout": 900, "replicas": replicas},
                     source="<bench router>")


@contextlib.contextmanager
def topology(replicas: int, work: Path, echo=print) -> Iterator[Any]:
    from pipelines import serve

    echo(f"router: starting {'one server' if replicas == 1 else f'{replicas} replicas behind vllm-router'} …")
    with serve.running(serve_config(replicas), work / f"serve-{replicas}", free=True, echo=lambda s: None) as s:
        echo(f"router: ready in {s.seconds:.1f} s at {s.base_url}")
        yield s


def drive(base_url: str, items, concurrency: int, path: Path) -> dict[str, Any]:
    """The evaluator's send path against `base_url`, for the base model."""
    import asyncio

    from pipelines.bench.eval import _drive

    path.unlink(missing_ok=True)
    return asyncio.run(_drive(base_url, MODEL, items, concurrency, path))


def bench(work: Path, *, repeats: int, quick: bool, data_source: str = "auto", echo=print) -> dict[str, Any]:
    n, levels = (QUICK_N, QUICK_CONCURRENCY) if quick else (FULL_N, FULL_CONCURRENCY)
    data = prepare(work, data_source)
    records = eval_records(data, n)
    items, warm = fixed_requests(records, MAX_TOKENS), fixed_requests(records[:WARMUP], MAX_TOKENS)
    echo(f"router: {n} prompts, {MAX_TOKENS} tokens each, concurrency {levels}, {repeats} repeat(s)")
    runs: dict[str, dict[int, list]] = {side: {c: [] for c in levels} for side in ("direct", "router")}
    ready: dict[str, float] = {}
    for side, replicas in (("direct", 1), ("router", REPLICAS)):
        with topology(replicas, work, echo) as s:
            ready[side] = s.seconds
            drive(s.base_url, warm, WARMUP, work / f"warm-{side}.jsonl")
            for i in range(repeats):
                for c in levels:
                    r = drive(s.base_url, items, c, work / f"{side}-{c}-{i}.jsonl")
                    runs[side][c].append(r)
                    echo(f"router: {side} repeat {i + 1}/{repeats} c={c}: {r['prompts_per_s']:.2f} prompts/s, "
                         f"p50 {r['p50_latency_ms']:.0f} ms")
    per_c = {}
    for c in levels:
        d, o = measure.summarise_runs(runs["direct"][c]), measure.summarise_runs(runs["router"][c])
        per_c[str(c)] = {"direct": d, "router": o, "ratio": measure.ratio(measure.median_of(o, "prompts_per_s"),
                                                                          measure.median_of(d, "prompts_per_s")),
                         "runs": {side: runs[side][c] for side in runs}}
    top = str(max(levels))
    result = measure.envelope("router", quick=quick, repeats=repeats, settings={
        "model": rel(TINY_BASE), "prompts": n, "max_tokens": MAX_TOKENS, "concurrency": list(levels),
        "data": {"source": data.source, "split": "val (dev)"}, "replicas": REPLICAS,
        "direct": "one `vllm serve` with every usable core (make serve)",
        "router": f"vllm-router before {REPLICAS} `vllm serve`, the cores split between them (make serve REPLICAS=2)",
        "driver": "pipelines.eval.client.make_client + answer_all (the evaluator's send path), ignore_eos",
        "ready_seconds": ready,
    })
    result.update({"ratio": per_c[top]["ratio"], "ratio_at_concurrency": int(top), "concurrency": per_c})
    return result


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = []
    for c, p in result["concurrency"].items():
        for side in ("direct", "router"):
            f = p[side]
            rows.append([f"{side}: {'one server' if side == 'direct' else s['router'].split(' (')[0]}", c,
                         measure.spread(f.get("prompts_per_s")), measure.spread(f.get("p50_latency_ms")),
                         measure.spread(f.get("p95_latency_ms")), measure.fmt(p["ratio"]) if side == "router" else "-"])
    m = result["machine"]
    return (f"router: {s['prompts']} prompts, {s['max_tokens']} tokens each, on {m.get('cores')} cores; ready in "
            + ", ".join(f"{k} {v:.0f} s" for k, v in s["ready_seconds"].items()) + "\n"
            + measure.table(["topology", "concurrency", "prompts/s", "p50 ms", "p95 ms", "router / direct"], rows)
            + f"\nratio at concurrency {result['ratio_at_concurrency']}: {measure.fmt(result['ratio'])} (on few cores: "
              "the router's cost; on GPUs with a replica per GPU: the scale)")
