"""Benchmark 2: generation for evaluation, the evaluator against vLLM (ours) vs one-at-a-time HF `generate` (theirs).

The same N CLUENER prompts (system + user, rendered by the model's chat template on both sides), the tiny base
model with the same LoRA adapter, greedy, exactly `max_tokens` (50) new tokens per answer on both sides, so
that both do the same work: ours sends `ignore_eos` (vLLM's sampling extra, through the openai client's
`extra_body`), theirs sets `min_new_tokens = max_new_tokens`.

- ours: the evaluator's own send path (`pipelines.eval.client.make_client` + `answer_all`: bounded concurrency,
  retries, every answer appended to a predictions file) at each concurrency, with the per-request latency timed
  around the client call. `run_eval` itself cannot send `ignore_eos`, so the fixed-length figures come from
  this driver; `run_eval` end to end (natural stop, scoring, report) is measured too, at the best concurrency.
- theirs: `python -m pipelines.bench.seeds generate` (PEFT adapter, not merged), in its own process, run while
  the server is stopped.
- the client's efficiency: ours / `vllm bench serve` (random dataset with the same shared-prefix length, prompt
  length, output length, `--ignore-eos`, the same concurrency) against the same server.

`ratio` = ours prompts/s at the best concurrency / theirs prompts/s.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pipelines_vllm_plugin as vllm_cpu_lora
from pipelines.bench import measure, server
from pipelines.bench.data import prepare
from pipelines.common.io import write_json
from pipelines.common.paths import ROOT, TINY_BASE, VENV_VLLM, rel, venv_bin

MAX_TOKENS = 50
CONCURRENCY = (1, 4, 16, 64)
QUICK_CONCURRENCY = (1, 16)
FULL_N = 200
QUICK_N = 16
WARMUP = 8

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "2"


# ---------------------------------------------------------------- ours: the evaluator's send path


class TimedClient:
    """Wraps an `openai.AsyncOpenAI`: `chat.completions.create` records its latency; nothing else changes."""

    def __init__(self, client: Any):
        self._client = client
        self.latencies: list[float] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, **kwargs):
        t = time.perf_counter()
        resp = await self._client.chat.completions.create(**kwargs)
        self.latencies.append(time.perf_counter() - t)
        return resp

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def fixed_requests(records: Sequence[dict], max_tokens: int) -> list[tuple[str, str, dict]]:
    """(id, key, request) items as the evaluator builds them, plus `ignore_eos` so every answer has max_tokens."""
    from pipelines.eval.prompts import build_request, request_key

    items = []
    for r in records:
        q = {**build_request(r, max_tokens), "extra_body": {"ignore_eos": True}}
        items.append((r["id"], request_key(q), q))
    return items


async def _drive(base_url: str, model: str, items, concurrency: int, path: Path) -> dict[str, Any]:
    from pipelines.eval import evaluate

    async with evaluate.make_client(base_url, None, evaluate.DEFAULT_TIMEOUT_S, concurrency) as client:
        timed = TimedClient(client)
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        done = await evaluate.answer_all(timed, model, items, path, base_url=base_url, concurrency=concurrency,
                                   retry=evaluate.RetryPolicy(), progress=False)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    tokens = [row.get("completion_tokens") or 0 for row in done.values()]
    return {
        "prompts_per_s": len(items) / seconds,
        "output_tokens_per_s": sum(tokens) / seconds,
        "p50_latency_ms": measure.interpolated_percentile(timed.latencies, 50) * 1000,
        "p95_latency_ms": measure.interpolated_percentile(timed.latencies, 95) * 1000,
        "seconds": seconds,
        "mean_output_tokens": sum(tokens) / len(tokens),
        "client_cpu_ms_per_request": cpu * 1000 / len(items),
    }


def _cpu_seconds() -> float:
    """CPU time of this process (the client: the server runs in its own processes)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ours_fixed(base_url: str, items, concurrency: int, path: Path) -> dict[str, Any]:
    path.unlink(missing_ok=True)  # a fresh predictions file: nothing is skipped as already done
    return asyncio.run(_drive(base_url, server.ADAPTER_NAME, items, concurrency, path))


def ours_run_eval(base_url: str, prompts: Path, n: int, concurrency: int, out: Path) -> dict[str, Any]:
    """`pipelines.eval.evaluate.run_eval` end to end (natural stop at max_tokens 50, scoring, report)."""
    from pipelines.eval import evaluate

    t0 = time.perf_counter()
    metrics = evaluate.run_eval(base_url, "cluener", prompts, [server.ADAPTER_NAME], out, concurrency=concurrency,
                          max_tokens=MAX_TOKENS, progress=False)
    seconds = time.perf_counter() - t0
    m = metrics["models"][server.ADAPTER_NAME]
    return {"prompts_per_s": n / seconds, "seconds": seconds, "micro_f1": m.get("micro_f1"),
            "truncated_rate": m.get("truncated_rate")}


# ---------------------------------------------------------------- vllm bench serve


def prompt_shape(records: Sequence[dict]) -> dict[str, float]:
    """Token lengths that make `vllm bench serve --dataset-name random` send prompts shaped like ours.

    Ours share a long prefix (system + instruction); vLLM caches it, so the random prompts get the same shared
    prefix length. The openai-chat backend sends the random text as the user message without a system message,
    so the chat template's own tokens (its default system prompt, the turn markers) are subtracted.
    """
    from transformers import AutoTokenizer

    from pipelines.data.records import build_messages

    tok = AutoTokenizer.from_pretrained(TINY_BASE)
    ids = [tok.apply_chat_template(build_messages(r), tokenize=True, add_generation_prompt=True) for r in records]
    ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in ids]
    common_prefix = len(ids[0])
    for x in ids[1:]:
        k = 0
        while k < min(common_prefix, len(x)) and x[k] == ids[0][k]:
            k += 1
        common_prefix = k
    mean_len = sum(map(len, ids)) / len(ids)
    marker = "\uE000"
    text = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)
    pre, post = text.split(marker)
    n_pre = len(tok(pre, add_special_tokens=False)["input_ids"])
    n_post = len(tok(post, add_special_tokens=False)["input_ids"])
    prefix = max(0, common_prefix - n_pre)
    rest = max(1, round(mean_len - n_pre - n_post) - prefix)
    shape: dict[str, float] = {"mean_prompt_tokens": round(mean_len, 1), "shared_prefix_tokens": common_prefix,
            "random_prefix_len": prefix, "random_input_len": rest, "template_tokens": n_pre + n_post}
    return shape


def vllm_bench(root_url: str, shape: dict[str, float], n: int, concurrency: int, work: Path, tag: str) -> dict[str, Any]:
    out_name = f"vllm-bench-{tag}.json"
    cmd = [str(venv_bin(VENV_VLLM, "vllm")), "bench", "serve", "--backend", "openai-chat", "--base-url", root_url,
           "--endpoint", "/v1/chat/completions", "--model", server.ADAPTER_NAME, "--tokenizer", str(Path(TINY_BASE)),
           "--dataset-name", "random", "--random-input-len", str(shape["random_input_len"]),
           "--random-prefix-len", str(shape["random_prefix_len"]), "--random-range-ratio", "0",
           "--random-output-len", str(MAX_TOKENS), "--ignore-eos", "--temperature", "0",
           "--num-prompts", str(n), "--max-concurrency", str(concurrency), "--request-rate", "inf",
           "--percentile-metrics", "e2el", "--metric-percentiles", "50,95", "--seed", "0",
           "--save-result", "--result-dir", str(work), "--result-filename", out_name, "--disable-tqdm"]
    from pipelines.common.lfcli import cli_env

    run = measure.run_child(cmd, work / f"vllm-bench-{tag}.log", env=cli_env(), cwd=ROOT)
    measure.check_child(run, "`vllm bench serve`")
    r = json.loads((work / out_name).read_text())
    completed = r.get("completed") or n
    return {
        "prompts_per_s": r["request_throughput"],
        "output_tokens_per_s": r.get("output_throughput"),
        "p50_latency_ms": r.get("p50_e2el_ms", r.get("median_e2el_ms")),
        "p95_latency_ms": r.get("p95_e2el_ms"),
        "mean_input_tokens": r.get("total_input_tokens", 0) / completed,
        "mean_output_tokens": r.get("total_output_tokens", 0) / completed,
        "failed": r.get("failed", 0),
    }


# ---------------------------------------------------------------- theirs


def theirs_generate(adapter: Path, prompts: Path, n: int, work: Path, tag: str) -> dict[str, Any]:
    from pipelines.common.lfcli import cli_env

    out = work / f"theirs-{tag}.json"
    cmd = [sys.executable, "-m", "pipelines.bench.seeds", "generate", "--model", str(Path(TINY_BASE)),
           "--adapter", str(adapter), "--data", str(prompts), "--n", str(n), "--max-new-tokens", str(MAX_TOKENS),
           "--fixed-length", "--out", str(out)]
    run = measure.run_child(cmd, work / f"theirs-{tag}.log", env=cli_env())
    measure.check_child(run, "the seeds' one-at-a-time generate (theirs)")
    return {**json.loads(out.read_text()), "peak_rss_mib": run.peak_rss_mib, "process_seconds": run.seconds}


# ---------------------------------------------------------------- the benchmark


def eval_records(data: Any, n: int) -> list[dict]:
    """The first `n` validation records (the bundled sample's few topped up from its train split)."""
    records = json.loads(data.val.read_text(encoding="utf-8"))
    if len(records) < n:
        records += json.loads(data.train.read_text(encoding="utf-8"))
    records = records[:n]
    if len(records) < n:
        raise measure.BenchError(f"only {len(records)} CLUENER records for `--eval-n {n}`: pass a smaller `--eval-n`.")
    return records


def per_concurrency(levels: Sequence[int], ours: dict[int, list], vb: dict[int, list],
                    theirs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each concurrency's summaries, ratio to theirs and efficiency against `vllm bench serve`."""
    per_c: dict[str, dict[str, Any]] = {}
    for c in levels:
        o = measure.summarise_runs(ours[c])
        v = measure.summarise_runs(vb[c]) if vb[c] else None
        per_c[str(c)] = {
            "ours": o,
            "vllm_bench": v,
            "ratio": measure.ratio(measure.median_of(o, "prompts_per_s"), measure.median_of(theirs, "prompts_per_s")),
            "efficiency": measure.ratio(measure.median_of(o, "prompts_per_s"), measure.median_of(v, "prompts_per_s"))
            if v else None,
            "runs": {"ours": ours[c], "vllm_bench": vb[c]},
        }
    return per_c


def bench(work: Path, *, repeats: int, quick: bool, n: int | None = None, concurrency: Sequence[int] | None = None,
          adapter: str | None = None, port: int | None = None, data_source: str = "auto",
          with_vllm_bench: bool = True, echo=print) -> dict[str, Any]:
    n = n or (QUICK_N if quick else FULL_N)
    levels = tuple(concurrency or (QUICK_CONCURRENCY if quick else CONCURRENCY))
    data = prepare(work, data_source)
    records = eval_records(data, n)
    prompts = write_json(work / "prompts.json", records, indent=1)
    adapter_path = server.ensure_adapter(work, data.dir, adapter, echo=echo)
    shape = prompt_shape(records)
    items = fixed_requests(records, MAX_TOKENS)
    warm = fixed_requests(records[:WARMUP], MAX_TOKENS)
    echo(f"eval: {n} prompts ({data.source} CLUENER), {MAX_TOKENS} tokens each, concurrency {levels}, "
         f"{repeats} repeat(s); prompt {shape['mean_prompt_tokens']} tokens, {shape['shared_prefix_tokens']} shared")
    ours: dict[int, list] = {c: [] for c in levels}
    vb: dict[int, list] = {c: [] for c in levels}
    run_eval_runs: list[dict] = []
    with server.running(adapter_path, work, port, echo=echo) as srv:
        ours_fixed(srv.base_url, warm, 4, work / "warmup.jsonl")
        for i in range(repeats):
            for c in levels:
                sides = ("ours", "vllm") if i % 2 == 0 else ("vllm", "ours")
                for side in sides:
                    if side == "ours":
                        r = ours_fixed(srv.base_url, items, c, work / f"ours-{c}-{i}.jsonl")
                        ours[c].append(r)
                    elif with_vllm_bench:
                        r = vllm_bench(srv.root_url, shape, n, c, work, f"{c}-{i}")
                        vb[c].append(r)
                    else:
                        continue
                    echo(f"eval: repeat {i + 1}/{repeats} c={c} {side}: {r['prompts_per_s']:.2f} prompts/s, "
                         f"p50 {r['p50_latency_ms']:.0f} ms, {r['mean_output_tokens']:.1f} tokens/answer")
        best = max(levels, key=lambda c: measure.median_of(measure.summarise_runs(ours[c]), "prompts_per_s") or 0.0)
        for i in range(repeats):
            r = ours_run_eval(srv.base_url, prompts, n, best, work / f"run-eval-{i}")
            run_eval_runs.append(r)
            echo(f"eval: run_eval (natural stop) c={best}: {r['prompts_per_s']:.2f} prompts/s")
        mem = server.group_memory_mib(srv.pid)
        server_info = {"ready_seconds": srv.ready_seconds, "rss_at_ready_mib": srv.rss_at_ready_mib,
                       "pss_at_ready_mib": srv.pss_at_ready_mib, "rss_end_mib": mem["rss"],
                       "pss_end_mib": mem["pss"], "peak_rss_mib": mem["hwm"],
                       "memory_note": "sums over the server's processes; RSS counts shared pages once per process, "
                                      "PSS splits them (the real footprint); peak = sum of each process's VmHWM"}
    theirs_runs = []
    for i in range(repeats):
        r = theirs_generate(adapter_path, prompts, n, work, str(i))
        theirs_runs.append(r)
        echo(f"eval: repeat {i + 1}/{repeats} theirs: {r['prompts_per_s']:.2f} prompts/s, "
             f"p50 {r['p50_latency_ms']:.0f} ms, {r['mean_output_tokens']:.1f} tokens/answer")

    theirs = measure.summarise_runs(theirs_runs)
    per_c = per_concurrency(levels, ours, vb, theirs)
    result = measure.envelope("eval", quick=quick, repeats=repeats, settings={
        "model": rel(TINY_BASE),
        "adapter": rel(adapter_path) if adapter_path.resolve().is_relative_to(ROOT) else "trained in the work dir",
        "prompts": n, "data": {"source": data.source, "split": "val (dev)"}, "max_tokens": MAX_TOKENS,
        "fixed_length": "ours: extra_body ignore_eos; theirs: min_new_tokens = max_new_tokens; "
                        "vllm bench: --ignore-eos",
        "concurrency": list(levels), "prompt_shape": shape,
        "ours_driver": "pipelines.eval.client.make_client + answer_all (the evaluator's send path), latency timed "
                       "around chat.completions.create; run_eval itself cannot send ignore_eos",
        "server": server_info,
        "vllm_cpu_lora_plugin": "on" if vllm_cpu_lora.enabled() else f"off ({vllm_cpu_lora.ENV_SWITCH}=0)",
    })
    efficiencies = [p["efficiency"] for p in per_c.values() if p["efficiency"] is not None]
    result.update({
        "ratio": per_c[str(best)]["ratio"], "best_concurrency": best, "target_ratio": 3,
        "efficiency_at_best": per_c[str(best)]["efficiency"],
        "efficiency_min": min(efficiencies) if efficiencies else None, "target_efficiency": 0.9,
        "theirs": theirs, "concurrency": per_c,
        "run_eval_natural_stop": {"concurrency": best, **measure.summarise_runs(run_eval_runs)},
        "runs": {"theirs": theirs_runs, "run_eval": run_eval_runs},
    })
    return result


def render(result: dict[str, Any]) -> str:
    th = result["theirs"]
    rows = [["theirs: HF generate, 1 at a time", "1", measure.spread(th.get("prompts_per_s")),
             measure.spread(th.get("p50_latency_ms")), measure.spread(th.get("p95_latency_ms")), "-", "-", "-", "-"]]
    for c, p in result["concurrency"].items():
        o, v = p["ours"], p["vllm_bench"] or {}
        rows.append(["ours: evaluator → vLLM", c, measure.spread(o.get("prompts_per_s")),
                     measure.spread(o.get("p50_latency_ms")), measure.spread(o.get("p95_latency_ms")),
                     measure.fmt(p["ratio"]), measure.spread(v.get("prompts_per_s")) if v else "-",
                     measure.fmt(p["efficiency"]), measure.spread(o.get("client_cpu_ms_per_request"))])
    re_ = result["run_eval_natural_stop"]
    s = result["settings"]
    return (f"eval: {s['prompts']} prompts, {s['max_tokens']} tokens per answer on every side\n"
            + measure.table(["side", "concurrency", "prompts/s", "p50 ms", "p95 ms", "ratio ours/theirs",
                            "vllm bench prompts/s", "efficiency", "client CPU ms/req"], rows)
            + f"\nratio at the best concurrency ({result['best_concurrency']}): {measure.fmt(result['ratio'])} "
            f"(target ≥ {result['target_ratio']}); efficiency there {measure.fmt(result['efficiency_at_best'])}, "
            f"lowest {measure.fmt(result['efficiency_min'])} (target ≥ {result['target_efficiency']})\n"
            f"run_eval end to end (natural stop, scoring) at c={re_['concurrency']}: "
            f"{measure.spread(re_.get('prompts_per_s'))} prompts/s; server ready in "
            f"{measure.fmt(s['server']['ready_seconds'])} s, memory (PSS) {measure.fmt(s['server'].get('pss_end_mib'))} "
            f"MiB after the runs; "
            f"theirs peak RSS {measure.spread(th.get('peak_rss_mib'))} MiB")
