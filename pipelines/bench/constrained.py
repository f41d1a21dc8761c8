"""Benchmark: constrained decoding against plain decoding, on the same server, adapter and requests.

The `make all` NER adapter (the newest `results/<run>/adapters/cluener` trained on the current tiny base, else
the eval benchmark's adapter) on the bundled NER validation split, sent through the evaluator's own send path
(`pipelines.eval.client.answer_all`, natural stop, the evaluator's max_tokens) at each concurrency, once plainly and
once with each record's span grammar in `structured_outputs`, alternating which goes first. Figures: prompts/s,
p50/p95 latency, entity micro-F1 of both, and what a grammar costs per record: building it (`ner_grammar`, pure
Python) and compiling it with xgrammar for the tiny tokenizer (what the server does once per distinct grammar).

`ratio` = constrained / plain prompts/s at the highest concurrency (target ≥ 0.85).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.bench import measure, server
from pipelines.bench.data import prepare
from pipelines.common.paths import RESULTS_DIR, ROOT, TINY_BASE, rel

CONCURRENCY = (1, 16, 64)
QUICK_CONCURRENCY = (1, 16)
QUICK_N = 32

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "2"


def make_all_adapter(echo=print) -> Path | None:
    """The newest `make all` NER adapter whose base is the tiny base as it is now."""
    from pipelines.serve.config import stale_base

    found = sorted(RESULTS_DIR.glob("*/adapters/cluener/adapter_config.json"), key=lambda p: p.stat().st_mtime)
    for cfg in reversed(found):
        if not stale_base("cluener", cfg.parent, str(Path(TINY_BASE))):
            return cfg.parent
        echo(f"constrained: not using {rel(cfg.parent)}: trained on other base weights")
    return None


def requests(records: Sequence[dict], constrained: bool) -> list[tuple[str, str, dict]]:
    """The evaluator's (id, key, request) items, with each record's span grammar when `constrained`."""
    from pipelines.eval import constraints, grammars, tasks
    from pipelines.eval.prompts import build_request, estimate_max_tokens, request_key

    spec = tasks.get("cluener")
    max_tokens = estimate_max_tokens([r["output"] for r in records])
    form = constraints.answer_form(records, "bench") if constrained else None
    items = []
    for r in records:
        q = build_request(r, max_tokens)
        if constrained:
            q["extra_body"] = grammars.extra_body(constraints.record_constraint(spec, r, form))
        items.append((r["id"], request_key(q), q))
    return items


async def _drive(base_url: str, items, concurrency: int, path: Path) -> dict[str, Any]:
    from pipelines.bench.eval import TimedClient
    from pipelines.eval.client import DEFAULT_TIMEOUT_S, RetryPolicy, answer_all, make_client

    path.unlink(missing_ok=True)
    async with make_client(base_url, None, DEFAULT_TIMEOUT_S, concurrency) as client:
        timed = TimedClient(client)
        t0 = time.perf_counter()
        done = await answer_all(timed, server.ADAPTER_NAME, items, path, base_url=base_url, concurrency=concurrency,
                                retry=RetryPolicy(), progress=False)
        seconds = time.perf_counter() - t0
    tokens = [row.get("completion_tokens") or 0 for row in done.values()]
    return {"prompts_per_s": len(items) / seconds, "seconds": seconds,
            "p50_latency_ms": measure.interpolated_percentile(timed.latencies, 50) * 1000,
            "p95_latency_ms": measure.interpolated_percentile(timed.latencies, 95) * 1000,
            "mean_output_tokens": sum(tokens) / len(tokens),
            "answers": {rid: done[(rid, key)]["answer"] for rid, key, _ in items}}


def grammar_costs(records: Sequence[dict]) -> dict[str, Any]:
    """Per record: ms to build its grammar and ms to compile it with xgrammar for the tiny tokenizer."""
    import xgrammar
    from transformers import AutoTokenizer

    from pipelines.eval import constraints, grammars, tasks

    labels = tasks.get("cluener").labels
    form = constraints.answer_form(records, "bench")
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(
        str(TINY_BASE))), cache_enabled=False)
    build, compile_ = [], []
    for r in records:
        t0 = time.perf_counter()
        grammar = grammars.ner_grammar(r["input"], labels, form)
        t1 = time.perf_counter()
        compiler.compile_grammar(grammar)
        t2 = time.perf_counter()
        build.append((t1 - t0) * 1000)
        compile_.append((t2 - t1) * 1000)
    return {f"{name}_ms_{p}": measure.interpolated_percentile(values, q) for name, values in (("build", build), ("compile", compile_))
            for p, q in (("p50", 50), ("p99", 99))}


def bench(work: Path, *, repeats: int, quick: bool, adapter: str | None = None, port: int | None = None,
          concurrency: Sequence[int] | None = None, echo=print) -> dict[str, Any]:
    from pipelines.eval.scoring import score_ner

    levels = tuple(concurrency or (QUICK_CONCURRENCY if quick else CONCURRENCY))
    data = prepare(work, "sample")
    records = json.loads(data.val.read_text(encoding="utf-8"))
    if quick:
        records = records[:QUICK_N]
    chosen = Path(adapter) if adapter else make_all_adapter(echo)
    adapter_path = chosen or server.ensure_adapter(work, data.dir, None, echo=echo)
    items = {False: requests(records, False), True: requests(records, True)}
    golds = {r["id"]: r["output"] for r in records}
    echo(f"constrained: {len(records)} prompts (bundled NER validation split), adapter {rel(adapter_path)}, "
         f"concurrency {levels}, {repeats} repeat(s)")
    runs: dict[str, dict[str, list]] = {str(c): {"plain": [], "constrained": []} for c in levels}
    f1: dict[str, float] = {}
    with server.running(adapter_path, work, port, echo=echo) as srv:
        asyncio.run(_drive(srv.base_url, items[True][:8], 4, work / "warmup.jsonl"))  # compile paths warmed
        for i in range(repeats):
            for c in levels:
                order = (False, True) if i % 2 == 0 else (True, False)
                for constrained in order:
                    r = asyncio.run(_drive(srv.base_url, items[constrained], c, work / f"{c}-{i}-{constrained}.jsonl"))
                    side = "constrained" if constrained else "plain"
                    answers = r.pop("answers")
                    f1[side] = score_ner([answers[rid] for rid in golds], list(golds.values()))["micro_f1"]
                    runs[str(c)][side].append(r)
                    echo(f"constrained: repeat {i + 1}/{repeats} c={c} {side}: {r['prompts_per_s']:.2f} prompts/s, "
                         f"p50 {r['p50_latency_ms']:.0f} ms, {r['mean_output_tokens']:.1f} tokens/answer")
    costs = grammar_costs(records)
    per_c: dict[str, dict[str, Any]] = {}
    for level, sides in runs.items():
        plain, con = measure.summarise_runs(sides["plain"]), measure.summarise_runs(sides["constrained"])
        per_c[level] = {"plain": plain, "constrained": con,
                    "ratio": measure.ratio(measure.median_of(con, "prompts_per_s"), measure.median_of(plain, "prompts_per_s")),
                    "runs": sides}
    top = str(max(levels))
    result = measure.envelope("constrained", quick=quick, repeats=repeats, settings={
        "model": rel(TINY_BASE), "adapter": rel(adapter_path) if adapter_path.resolve().is_relative_to(ROOT)
        else "trained in the work dir", "adapter_from": "make all" if chosen else "the eval benchmark's",
        "prompts": len(records), "data": "bundled CLUENER validation split (data/raw/cluener_sample/dev.json)",
        "concurrency": list(levels), "driver": "pipelines.eval.client.answer_all, natural stop",
        "grammar": "pipelines.eval.grammars.ner_grammar (spans of the input, dict form)",
    })
    result.update({"ratio": per_c[top]["ratio"], "ratio_at_concurrency": int(top), "target_ratio": 0.85,
                   "micro_f1": f1, "grammar_costs": costs, "concurrency": per_c})
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for c, p in result["concurrency"].items():
        for side in ("plain", "constrained"):
            s = p[side]
            rows.append([c, side, measure.spread(s.get("prompts_per_s")), measure.spread(s.get("p50_latency_ms")),
                         measure.spread(s.get("p95_latency_ms")), measure.spread(s.get("mean_output_tokens")),
                         measure.fmt(p["ratio"]) if side == "constrained" else ""])
    g = result["grammar_costs"]
    f1 = result.get("micro_f1") or {}
    return "\n".join([
        measure.table(["concurrency", "decoding", "prompts/s", "p50 ms", "p95 ms", "tokens/answer",
                      "constrained / plain"], rows),
        "",
        f"Entity micro-F1 on these prompts: plain {measure.fmt(f1.get('plain'))}, constrained "
        f"{measure.fmt(f1.get('constrained'))}. Grammar per record: build {g['build_ms_p50']:.2f} ms (p99 "
        f"{g['build_ms_p99']:.2f}), xgrammar compile {g['compile_ms_p50']:.2f} ms (p99 {g['compile_ms_p99']:.2f}).",
    ])
