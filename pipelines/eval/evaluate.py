"""`make eval`: score served models through the OpenAI-compatible API, resumably.

    python -m pipelines eval --base-url http://127.0.0.1:8000/v1 --task cluener --data data/cluener_val.json \
        --model tiny-base --model cluener --out results/eval [--concurrency 16] [--limit N] [--max-tokens N]

Four stages: build each request from its alpaca record (pure), send it (`openai.AsyncOpenAI`, bounded
concurrency, retries with backoff), parse the answer and score it (pure, `pipelines.eval.scoring`). Every answer
is appended to `OUT/<model>/predictions.jsonl` keyed by record id and the sha256 of the request, so a rerun
sends only what is missing and a killed run loses nothing but its requests in flight. Writes
`OUT/metrics.json` and `OUT/report.md`.

max_tokens: one value for every record and model, so that figures compare (`pipelines.eval.prompts`);
`--max-tokens` overrides it.

The evaluator knows the server only through HTTP; it imports neither vLLM nor LLaMA-Factory. With
`--tokenizer PATH` it first runs the train/serve prompt parity check (`pipelines.eval.parity`, imported only then).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.common.io import file_sha256, write_json
from pipelines.data.records import RecordError, load_records, user_text
from pipelines.eval import EvalError, tasks
from pipelines.eval.client import (
    CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
    answer_all,
    check_served,
    make_client,
    normalize_base_url,
)
from pipelines.eval.predictions import model_dir_name
from pipelines.eval.prompts import (
    MAX_TOKENS_MARGIN,
    build_request,
    estimate_max_tokens,
    fit_max_tokens,
    prompt_token_bound,
    request_key,
)

#: Bump when a change alters what is sent or how it is scored: figures of different versions do not compare.
EVAL_SPEC_VERSION = "1"
N_EXAMPLES = 3


# ---------------------------------------------------------------- stages 3 and 4: parse and score (pure)


def score(
    kind: str, answers: Sequence[str], golds: Sequence[str], finish_reasons: Sequence[str | None]
) -> dict[str, Any]:
    """The metrics of one model's answers (parsing happens inside the scoring functions)."""
    from pipelines.eval import scoring

    if kind == "ner":
        m = scoring.score_ner(answers, golds)
        m["mean_length"] = scoring.mean_length(answers)
    elif kind == "classification":
        m = scoring.score_classification(answers, golds)
    else:
        m = scoring.score_generation(answers, golds)
    n = len(answers)
    m["truncated_rate"] = sum(r == "length" for r in finish_reasons) / n if n else 0.0
    return m


def pick_examples(
    records: Sequence[dict[str, str]], answers: dict[str, Sequence[str]], k: int = N_EXAMPLES
) -> list[dict]:
    """Up to k records for the report: first those where the models answer differently, then the rest, in data order."""
    models = list(answers)
    differ = [i for i in range(len(records)) if len({answers[m][i] for m in models}) > 1]
    same = [i for i in range(len(records)) if i not in set(differ)]
    return [
        {"id": records[i]["id"], "user": user_text(records[i]), "gold": records[i]["output"],
         "answers": {m: answers[m][i] for m in models}}
        for i in (differ + same)[:k]
    ]


# ---------------------------------------------------------------- the run


def run_eval(
    base_url: str,
    task: str,
    data: str | Path,
    models: Sequence[str],
    out: str | Path,
    *,
    concurrency: int = 16,
    limit: int | None = None,
    api_key: str | None = None,
    max_tokens: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    judge: str | None = None,
    tokenizer: str | None = None,
    template: str = "qwen",
    retry: RetryPolicy = RetryPolicy(),
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `models` served at `base_url` on `data`; write OUT/metrics.json and OUT/report.md; the metrics."""
    spec = tasks.get(task)
    if not models:
        raise EvalError("no `--model` given: name the served base model and/or adapters to evaluate.")
    if judge and len(models) < 2:
        raise EvalError("`--judge` compares the first `--model` (the baseline) with the others: pass at least two.")
    kind = spec.kind
    models = list(dict.fromkeys(models))
    base_url = normalize_base_url(base_url)
    out = Path(out)
    try:
        records = load_records(data, limit)
    except RecordError as e:
        raise EvalError(str(e)) from None
    served = asyncio.run(_check(base_url, api_key, timeout, [*models, *([judge] if judge else [])]))
    contexts = [served[m] for m in served if isinstance(served[m], int)]
    context = min(contexts) if contexts else None
    if max_tokens:
        n_tokens, tokens_from = max_tokens, "--max-tokens"
    else:
        estimate = estimate_max_tokens([r["output"] for r in records])
        n_tokens = fit_max_tokens(estimate, context, prompt_token_bound(records))
        tokens_from = f"data: longest gold answer in UTF-8 bytes + {MAX_TOKENS_MARGIN}"
        if n_tokens < estimate:
            tokens_from += (f", lowered from {estimate} to fit the served context of {context} tokens "
                            f"(prompts up to {prompt_token_bound(records)})")
    requests = [build_request(r, n_tokens) for r in records]
    keys = [request_key(q) for q in requests]
    items = [(r["id"], k, q) for r, k, q in zip(records, keys, requests)]

    parity_summary = None
    if tokenizer:
        from pipelines.eval import parity  # imports LLaMA-Factory: only when asked

        checked = parity.check(tokenizer, records, template=template)
        if not checked.ok:
            raise EvalError(checked.message)
        parity_summary = {"tokenizer": str(tokenizer), "template": template, "records": checked.n, "identical": True}

    answers: dict[str, list[str]] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for model in models:
        path = out / model_dir_name(model) / "predictions.jsonl"
        done = asyncio.run(_answer(base_url, api_key, timeout, concurrency, model, items, path, retry, progress))
        rows = [done[(r["id"], k)] for r, k in zip(records, keys)]
        answers[model] = [row["answer"] for row in rows]
        finish = [row.get("finish_reason") for row in rows]
        per_model[model] = score(kind, answers[model], [r["output"] for r in records], finish)

    metrics: dict[str, Any] = {
        "eval_spec_version": EVAL_SPEC_VERSION,
        "task": task,
        "kind": kind,
        "scale": spec.scale,
        "data": {"path": str(data), "sha256": file_sha256(data), "n": len(records), "limit": limit},
        "settings": {
            "base_url": base_url,
            "temperature": 0,
            "max_tokens": n_tokens,
            "max_tokens_from": tokens_from,
            "system": "the record's `system` when non-empty, else none (the chat template's default)",
            "user": "instruction, then \"\\n\" + input when input is non-empty",
            "concurrency": concurrency,
            "timeout_s": timeout,
            "connect_timeout_s": CONNECT_TIMEOUT_S,
            "parity": parity_summary,
        },
        "models": per_model,
    }
    if judge:
        metrics["judge"] = asyncio.run(
            _judge(base_url, api_key, timeout, concurrency, judge, models, records, answers, out, retry, progress)
        )

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    from pipelines.eval import report

    report.write_report(out, metrics, pick_examples(records, answers))
    return metrics


async def _check(base_url: str, api_key: str | None, timeout: float, wanted: Sequence[str]) -> dict[str, int | None]:
    async with make_client(base_url, api_key, timeout, 1) as client:
        return await check_served(client, base_url, wanted)


async def _answer(base_url, api_key, timeout, concurrency, model, items, path, retry, progress):
    async with make_client(base_url, api_key, timeout, concurrency) as client:
        return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                retry=retry, progress=progress)


async def _judge(base_url, api_key, timeout, concurrency, judge, models, records, answers, out, retry, progress):
    from pipelines.eval import judge as judging

    baseline, results = models[0], {}
    async with make_client(base_url, api_key, timeout, concurrency) as client:
        for cand in models[1:]:
            items = []
            for i, r in enumerate(records):
                q = judging.build_judge_request(
                    r["id"], user_text(r), r["output"], answers[baseline][i], answers[cand][i]
                )
                items.append((r["id"], request_key(q), q))
            path = out / "judge" / model_dir_name(judge) / f"{model_dir_name(cand)}_vs_{model_dir_name(baseline)}.jsonl"
            done = await answer_all(client, judge, items, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=progress, desc=f"{judge}: {cand} vs {baseline}")
            verdicts = [judging.parse_verdict(done[(rid, key)]["answer"]) for rid, key, _ in items]
            outcomes = [judging.outcome(rid, v) for (rid, _, _), v in zip(items, verdicts)]
            results[cand] = judging.tally(outcomes)
    return {"judge": judge, "baseline": baseline, "models": results}


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines eval", description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--task", required=True, help=f"how answers are scored: one of {', '.join(tasks.TASKS)}")
    ap.add_argument("--data", required=True, help="alpaca JSON list (e.g. data/cluener_val.json)")
    ap.add_argument("--model", action="append", required=True, dest="models",
                    help="a served model name (base or adapter); repeat; the first is the baseline")
    ap.add_argument("--out", required=True, help="output folder: <model>/predictions.jsonl, metrics.json, report.md")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    ap.add_argument("--limit", type=int, help="evaluate the first N records only")
    ap.add_argument("--api-key-env", default="VLLM_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--max-tokens", type=int, help="max_tokens per answer (default: from the data's gold answers)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="read timeout per request, seconds")
    ap.add_argument("--retries", type=int, default=RetryPolicy.attempts, help="tries per request on transient errors")
    ap.add_argument("--judge", help="a served model that judges each later --model against the first (win rate)")
    ap.add_argument("--tokenizer", help="model folder: check train/serve prompt parity with it before evaluating")
    ap.add_argument("--template", default="qwen", help="LLaMA-Factory template for the parity check (default qwen)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metrics = run_eval(
            args.base_url, args.task, args.data, args.models, args.out,
            concurrency=args.concurrency, limit=args.limit, api_key=os.environ.get(args.api_key_env),
            max_tokens=args.max_tokens, timeout=args.timeout, judge=args.judge, tokenizer=args.tokenizer,
            template=args.template, retry=RetryPolicy(attempts=args.retries), progress=not args.no_progress,
        )
    except EvalError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evaluate: interrupted; the answers so far are kept: rerun the same command to resume.", file=sys.stderr)
        return 130
    keys = tasks.get(metrics["task"]).summary
    for model, m in metrics["models"].items():
        print(f"{model}: n={m['n']} " + " ".join(f"{k}={m[k]:.4f}" for k in keys))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
