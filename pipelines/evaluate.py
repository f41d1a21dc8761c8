"""`make eval`: score served models through the OpenAI-compatible API, resumably.

    python -m pipelines.evaluate --base-url http://127.0.0.1:8000/v1 --task cluener --data data/cluener_val.json \
        --model tiny-base --model cluener --out results/eval [--concurrency 16] [--limit N] [--max-tokens N]

Four stages: build each request from its alpaca record (pure), send it (`openai.AsyncOpenAI`, bounded
concurrency, retries with backoff), parse the answer and score it (pure, `pipelines.scoring`). Every answer
is appended to `OUT/<model>/predictions.jsonl` keyed by record id and the sha256 of the request, so a rerun
sends only what is missing and a killed run loses nothing but its requests in flight. Writes
`OUT/metrics.json` and `OUT/report.md`.

max_tokens (one value for every record and model, so figures compare): the longest gold answer in UTF-8 bytes
+ 16 (a byte-level BPE token covers at least one byte, so a gold-length answer is never cut), lowered to fit
the context the server reports in `/v1/models` (`max_model_len`); `--max-tokens` overrides it.

The evaluator knows the server only through HTTP; it imports neither vLLM nor LLaMA-Factory. With
`--tokenizer PATH` it first runs the train/serve prompt parity check (`pipelines.parity`, imported only then).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.paths import file_sha256

#: Bump when a change alters what is sent or how it is scored: figures of different versions do not compare.
EVAL_SPEC_VERSION = "1"
#: task name -> scoring kind
TASKS = {"cluener": "ner", "ruozhiba": "generation", "huanhuan": "generation", "generation": "generation",
         "classification": "classification"}
#: The connect timeout: httpx's default of 5 s fails on a busy small machine at high concurrency.
CONNECT_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 600.0
#: Tokens added to the longest gold answer's UTF-8 length (an upper bound of its byte-level BPE tokens).
MAX_TOKENS_MARGIN = 16
#: Tokens the chat template adds around system + user text (role markers, Qwen's default system prompt).
PROMPT_OVERHEAD_TOKENS = 128
N_EXAMPLES = 3

SCALES = {
    "ner": "fractions in [0, 1]",
    "generation": "bleu_4, rouge_1, rouge_2, rouge_l in percent (0-100), as LLaMA-Factory's predict_bleu-4 and "
    "predict_rouge-*; rates are fractions in [0, 1]; lengths in characters",
    "classification": "fractions in [0, 1]; lengths in characters",
}


class EvalError(RuntimeError):
    """A problem the user can fix, said in one sentence."""


# ---------------------------------------------------------------- data


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The alpaca records of a JSON list file (the first `limit`), with `id`, `input` and `system` filled in."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"data file `{path}` does not exist: run `make data` or pass another `--data`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"data file `{path}` is not valid JSON ({e}): pass a JSON list of alpaca records.") from None
    if not isinstance(data, list) or not data:
        raise EvalError(f"data file `{path}` is not a non-empty JSON list of alpaca records: run `make data`.")
    records = []
    for i, r in enumerate(data):
        if not (isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)):
            raise EvalError(f"record {i} of `{path}` lacks a string `instruction` or `output`: "
                            f"regenerate it with `make data`.")
        records.append({
            "id": str(r["id"]) if r.get("id") is not None else str(i),
            "instruction": r["instruction"],
            "input": r.get("input") or "",
            "output": r["output"],
            "system": r.get("system") or "",
        })
    return records[:limit] if limit is not None else records


# ---------------------------------------------------------------- stage 1: build the request (pure)


def user_text(record: dict[str, str]) -> str:
    """The user message as LLaMA-Factory's alpaca converter joins it: instruction, then "\\n" + input if any."""
    return "\n".join(part for part in (record["instruction"], record.get("input") or "") if part)


def build_messages(record: dict[str, str]) -> list[dict[str, str]]:
    """The chat messages of a record: its system prompt when non-empty (else the chat template's default), the user."""
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [{"role": "user", "content": user_text(record)}]


def estimate_max_tokens(outputs: Sequence[str], margin: int = MAX_TOKENS_MARGIN) -> int:
    """A generous max_tokens: the longest gold answer in UTF-8 bytes (byte-level BPE never needs more) + margin."""
    return max((len(o.encode("utf-8")) for o in outputs), default=0) + margin


def prompt_token_bound(records: Sequence[dict[str, str]], overhead: int = PROMPT_OVERHEAD_TOKENS) -> int:
    """An upper bound of the prompt tokens: the longest system + user text in UTF-8 bytes + the template's share."""
    return max((len((r.get("system", "") + user_text(r)).encode("utf-8")) for r in records), default=0) + overhead


def fit_max_tokens(estimate: int, context: int | None, prompt_bound: int) -> int:
    """`estimate`, lowered so that prompt + answer fit a context of `context` tokens (None: unknown, unchanged)."""
    if context is None:
        return estimate
    room = context - prompt_bound
    if room < 1:
        raise EvalError(f"the prompts may need up to {prompt_bound} tokens, more than the served context of {context}: "
                        f"serve with a larger `max_model_len` or pass `--max-tokens`.")
    return min(estimate, room)


def build_request(record: dict[str, str], max_tokens: int) -> dict[str, Any]:
    """The chat-completion arguments for a record, without the model name: greedy, bounded length."""
    return {"messages": build_messages(record), "max_tokens": max_tokens, "temperature": 0}


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON: a changed prompt or setting is a new request."""
    canon = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- predictions file (resume)


def model_dir_name(model: str) -> str:
    """A directory name for a served model name (`/` and other unsafe characters become `_`)."""
    return re.sub(r'[\\/:*?"<>|\s]+', "_", model).strip(".") or "_"


def load_done(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of a predictions file by (id, key). A truncated last line (a killed run) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.setdefault((row["id"], row["key"]), row)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvalError(f"line {lineno} of `{path}` is not a prediction row: delete that line and rerun.") from None
    return done


# ---------------------------------------------------------------- stage 2: send


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries per request on transient errors (connection, timeout, 408/409/429/5xx)
    backoff_s: float = 1.0  # first wait; doubles each retry
    max_backoff_s: float = 30.0


class _Failure(Exception):
    def __init__(self, record_id: str, error: Exception, transient: bool):
        super().__init__(str(error))
        self.record_id, self.error, self.transient = record_id, error, transient


def describe(error: BaseException) -> str:
    """`Type: message`, with the underlying cause of a connection error (openai says only "Connection error.")."""
    text = f"{type(error).__name__}: {str(error).rstrip('. ')}"
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" / {type(cause).__name__}: {str(cause).rstrip('. ')}"
    return text.replace("\n", " ")


def is_transient(error: Exception) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if not isinstance(error, openai.APIStatusError):
        return False
    return error.status_code in (408, 409, 429) or error.status_code >= 500


def make_client(base_url: str, api_key: str | None, timeout: float, concurrency: int):
    """The official async client over openai's aiohttp transport (the `openai[aiohttp]` extra): at concurrency
    64 it spends 1.8 ms of client CPU per request where httpx spends 6.6, CPU the server needs on a small
    machine (BENCHMARKS.md). httpx, with the same timeouts and pool, when aiohttp is not installed."""
    import httpx
    import openai

    timeouts = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
    pool = httpx.Limits(max_connections=max(concurrency, 1) + 4, max_keepalive_connections=max(concurrency, 1))
    try:
        http_client = openai.DefaultAioHttpClient(timeout=timeouts, limits=pool)
    except (AttributeError, RuntimeError):  # an openai without the aiohttp transport or without its extra
        http_client = httpx.AsyncClient(timeout=timeouts, limits=pool)
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",
        timeout=timeouts,
        max_retries=0,  # our own loop retries, with backoff we control and a message we write
        http_client=http_client,
    )


async def complete(
    client: Any, model: str, record_id: str, request: dict[str, Any], retry: RetryPolicy
) -> dict[str, Any]:
    """Send one request; the answer's text, finish reason and token count. Raises _Failure."""
    last: Exception | None = None
    for attempt in range(max(retry.attempts, 1)):
        try:
            resp = await client.chat.completions.create(model=model, **request)
        except Exception as e:
            import openai

            if not isinstance(e, openai.APIError):
                raise
            if not is_transient(e):
                raise _Failure(record_id, e, transient=False) from e
            last = e
            if attempt + 1 < retry.attempts:
                await asyncio.sleep(min(retry.max_backoff_s, retry.backoff_s * 2**attempt))
            continue
        choice = resp.choices[0]
        return {
            "answer": choice.message.content or "",
            "finish_reason": choice.finish_reason,
            "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
        }
    raise _Failure(record_id, last or RuntimeError("no attempt made"), transient=True)


def missing_models(wanted: Sequence[str], served: Sequence[str], base_url: str) -> str | None:
    """The one-sentence complaint about models not served, or None when all are (pure)."""
    missing = [m for m in dict.fromkeys(wanted) if m not in served]
    if not missing:
        return None
    names = ", ".join(f"`{m}`" for m in missing)
    have = ", ".join(f"`{m}`" for m in served) or "nothing"
    verb = "is" if len(missing) == 1 else "are"
    return (f"{names} {verb} not served at `{base_url}`, which serves {have}: add the adapter to the serve config "
            f"(or `make lora-load NAME=…`) or fix `--model`.")


async def check_served(client: Any, base_url: str, wanted: Sequence[str]) -> dict[str, int | None]:
    """GET /models; each served name with its `max_model_len` (vLLM lists it for base models, else None).

    Raises EvalError when the server is down or a wanted model is not listed.
    """
    import openai

    try:
        page = await client.models.list()
    except openai.APIConnectionError as e:
        raise EvalError(f"cannot reach the server at `{base_url}` ({describe(e)}): start it with `make serve` "
                        f"or pass the right `--base-url`.") from None
    except openai.APIStatusError as e:
        raise EvalError(f"the server at `{base_url}` answered `GET /models` with HTTP {e.status_code}: "
                        f"check `--base-url` (it ends in `/v1`) and `--api-key-env`.") from None
    served = {m.id: getattr(m, "max_model_len", None) for m in page.data}
    problem = missing_models(wanted, list(served), base_url)
    if problem:
        raise EvalError(problem)
    return served


async def answer_all(
    client: Any,
    model: str,
    items: Sequence[tuple[str, str, dict[str, Any]]],
    path: Path,
    *,
    base_url: str,
    concurrency: int,
    retry: RetryPolicy,
    progress: bool = True,
    desc: str | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Answer every (id, key, request) not yet in `path`, appending each answer as it arrives; all rows by key."""
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(path)
    wanted = {(rid, key): req for rid, key, req in items}
    todo = [(rid, key, req) for (rid, key), req in wanted.items() if (rid, key) not in done]
    sem = asyncio.Semaphore(max(concurrency, 1))
    failures: list[_Failure] = []
    # a small blocking append per answer, flushed so that a killed run keeps it: cheaper than a writer thread
    with open(path, "a", encoding="utf-8") as fh, tqdm(  # noqa: ASYNC230
        total=len(wanted), initial=len(wanted) - len(todo), desc=desc or model, unit="req", disable=not progress,
        dynamic_ncols=True, file=sys.stderr,
    ) as bar:

        async def one(rid: str, key: str, req: dict[str, Any]) -> None:
            async with sem:
                if failures:
                    return
                try:
                    res = await complete(client, model, rid, req, retry)
                except _Failure as f:
                    failures.append(f)
                    return
                row = {"id": rid, "key": key, **res}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                done[(rid, key)] = row
                bar.update(1)

        await asyncio.gather(*(one(*t) for t in todo))
    if failures:
        f = failures[0]
        kept = sum(1 for k in wanted if k in done)
        if f.transient:
            raise EvalError(
                f"the server at `{base_url}` stopped answering while evaluating `{model}` ({describe(f.error)}); "
                f"{kept} of {len(wanted)} answers are kept in `{path}`: restart the server and rerun the same "
                f"command to resume."
            )
        raise EvalError(
            f"the server rejected record `{f.record_id}` for `{model}` ({describe(f.error)}); {kept} of "
            f"{len(wanted)} answers are kept in `{path}`: if the context is too long, pass a smaller `--max-tokens`."
        )
    return done


# ---------------------------------------------------------------- stages 3 and 4: parse and score (pure)


def score(
    kind: str, answers: Sequence[str], golds: Sequence[str], finish_reasons: Sequence[str | None]
) -> dict[str, Any]:
    """The metrics of one model's answers (parsing happens inside the scoring functions)."""
    from pipelines import scoring

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
    if task not in TASKS:
        raise EvalError(f"unknown `--task {task}`: choose one of {', '.join(TASKS)}.")
    if not models:
        raise EvalError("no `--model` given: name the served base model and/or adapters to evaluate.")
    if judge and len(models) < 2:
        raise EvalError("`--judge` compares the first `--model` (the baseline) with the others: pass at least two.")
    kind = TASKS[task]
    models = list(dict.fromkeys(models))
    base_url = normalize_base_url(base_url)
    out = Path(out)
    records = load_records(data, limit)
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
        from pipelines import parity  # imports LLaMA-Factory: only when asked

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
        "scale": SCALES[kind],
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
    from pipelines import report

    report.write_report(out, metrics, pick_examples(records, answers))
    return metrics


def normalize_base_url(url: str) -> str:
    """The OpenAI base URL, ending in `/v1` (appended when missing)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a killed run never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def _check(base_url: str, api_key: str | None, timeout: float, wanted: Sequence[str]) -> dict[str, int | None]:
    async with make_client(base_url, api_key, timeout, 1) as client:
        return await check_served(client, base_url, wanted)


async def _answer(base_url, api_key, timeout, concurrency, model, items, path, retry, progress):
    async with make_client(base_url, api_key, timeout, concurrency) as client:
        return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                retry=retry, progress=progress)


async def _judge(base_url, api_key, timeout, concurrency, judge, models, records, answers, out, retry, progress):
    from pipelines import judge as judging

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
    ap = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--task", required=True, choices=sorted(TASKS), help="how answers are scored")
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
    keys = {"ner": ("micro_f1", "type_f1", "trailing_text_rate"), "generation": ("bleu_4", "rouge_l"),
            "classification": ("accuracy",)}[metrics["kind"]]
    for model, m in metrics["models"].items():
        print(f"{model}: n={m['n']} " + " ".join(f"{k}={m[k]:.4f}" for k in keys))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
