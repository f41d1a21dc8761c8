"""`make eval`: score served models through the OpenAI-compatible API, resumably.

    python -m pipelines eval --base-url http://127.0.0.1:8000/v1 --task cluener --data data/cluener_val.json \
        --model tiny-base --model cluener --out results/eval [--concurrency 16] [--limit N] [--max-tokens N]

Four stages: build each request from its alpaca record (pure), send it (`openai.AsyncOpenAI`, bounded
concurrency, retries with backoff), parse the answer and score it (pure, `pipelines.eval.scoring`). Every answer
is appended to `OUT/<model>/predictions.jsonl` keyed by record id and the sha256 of the request and of the model
behind the name (`pipelines.eval.predictions`), so a rerun sends only what is missing and a killed run loses
nothing but its requests in flight. Writes `OUT/metrics.json` and `OUT/report.md`.

max_tokens: one value for every record and model, so that figures compare (`pipelines.eval.prompts`);
`--max-tokens` overrides it.

It stays one module because it is the run itself, in order (check the settings and the data, ask the server
what it serves, answer, check obedience, score, write), each step a call into the small modules beside it.
The evaluator knows the server only through HTTP; it imports neither vLLM nor LLaMA-Factory. With
`--tokenizer PATH` it first runs the train/serve prompt parity check (`pipelines.eval.parity`, imported only then).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.common.io import file_sha256, write_json
from pipelines.data.records import RecordError, load_records, user_text
from pipelines.eval import EvalError, constraints, tasks
from pipelines.eval.client import (
    CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
    answer_all,
    check_served,
    make_client,
    normalize_base_url,
)
from pipelines.eval.constrain import extra_body
from pipelines.eval.predictions import (
    NotSaved,
    answer_key,
    load_done,
    model_dir_name,
    model_identity,
    predictions_path,
    set_aside,
)
from pipelines.eval.prompts import (
    MAX_TOKENS_MARGIN,
    build_request,
    estimate_max_tokens,
    fit_max_tokens,
    prompt_token_bound,
)

#: Bump when a change alters what is sent or how it is scored: figures of different versions do not compare.
EVAL_SPEC_VERSION = "2"
N_EXAMPLES = 3
DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default


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
    records: Sequence[dict[str, str]], answers: Mapping[str, Sequence[str]], k: int = N_EXAMPLES
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


def check_data(spec: tasks.Task, records: Sequence[dict[str, str]], source: str | Path) -> None:
    """Refuse data the task cannot score, before the first request is sent."""
    if spec.kind == "ner":
        from pipelines.eval.scoring import parse_entities

        for r in records:
            if not parse_entities(r["output"]).valid_json:
                raise EvalError(f"record `{r['id']}` of `{source}` has a gold answer that is not a JSON object or list "
                                f"({r['output'][:40]!r}), so `--task {spec.name}` cannot score it: pass the task the "
                                "data was converted for (e.g. `--task ruozhiba`) or regenerate it with `make data`.")
    elif spec.kind == "classification":
        for r in records:
            if not r["output"].strip():
                raise EvalError(f"record `{r['id']}` of `{source}` has an empty label: regenerate it with `make data`.")


def check_settings(concurrency: int, limit: int | None, max_tokens: int | None, timeout: float,
                   retry: RetryPolicy, constrain_mode: str) -> None:
    """The numbers and modes of a run, range-checked (the CLI checks the same at parse time)."""
    for name, value, least in (("--concurrency", concurrency, 1), ("--limit", limit, 1),
                               ("--max-tokens", max_tokens, 1), ("--retries", retry.attempts, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise EvalError(f"`{name} {value}` must be a whole number of at least {least}.")
    if not (isinstance(timeout, (int, float)) and timeout > 0 and timeout < float("inf")):
        raise EvalError(f"`--timeout {timeout}` must be a positive number of seconds.")
    if constrain_mode not in constraints.MODES:
        raise EvalError(f"`--constrain {constrain_mode}` is not one of {', '.join(constraints.MODES)}.")


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
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: bool = True,
    constrain: str = "none",
    fresh: bool = False,
    served: dict[str, dict[str, Any]] | None = None,
    echo=None,
) -> dict[str, Any]:
    """Evaluate `models` served at `base_url` on `data`; write OUT/metrics.json and OUT/report.md; the metrics.

    `constrain`: `none` (plain requests), `auto` (the task's constraint where it has one: spans of the input for
    NER, one of the candidates for classification), `both` (each model plainly and constrained). `fresh`: set the
    saved answers aside and ask for all of them again. `served`: the model cards (`root`, `parent`,
    `max_model_len` per name) to score saved answers with and no server at all; a missing answer raises NotSaved."""
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    spec = tasks.get(task)
    check_settings(concurrency, limit, max_tokens, timeout, retry, constrain)
    if not models:
        raise EvalError("no `--model` given: name the served base model and/or adapters to evaluate.")
    if judge and len(models) < 2:
        raise EvalError("`--judge` compares the first `--model` (the baseline) with the others: pass at least two.")
    kind = spec.kind
    models = list(dict.fromkeys(models))
    folders = [model_dir_name(m).lower() for m in models]
    if len(set(folders)) < len(folders):
        raise EvalError(f"the models {', '.join(f'`{m}`' for m in models)} would share a predictions folder on a "
                        "case-insensitive file system: evaluate them into separate `--out` folders.")
    passes = {"none": [False], "auto": [spec.constraint is not None], "both": [False, True]}[constrain]
    if spec.constraint is None:
        passes = [False]
    base_url = normalize_base_url(base_url)
    out = Path(out)
    try:
        records = load_records(data, limit)
    except RecordError as e:
        raise EvalError(str(e)) from None
    check_data(spec, records, data)
    form = constraints.answer_form(records, str(data)) if True in passes and spec.constraint == "spans" else None
    constrained_so = ([constraints.record_constraint(spec, r, form) for r in records] if True in passes else None)

    offline = served is not None
    if served is not None:  # offline
        missing = [m for m in [*models, *([judge] if judge else [])] if m not in served]
        if missing:
            raise NotSaved(f"no model card given for {', '.join(missing)}.")
    else:
        served = asyncio.run(_check(base_url, api_key, timeout, [*models, *([judge] if judge else [])]))
    contexts = [served[m]["max_model_len"] for m in served if isinstance(served[m]["max_model_len"], int)]
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
    plain = [build_request(r, n_tokens) for r in records]
    requests = {False: plain}
    if constrained_so is not None:
        requests[True] = [{**q, "extra_body": extra_body(so)} for q, so in zip(plain, constrained_so)]
    identities = {m: model_identity(served[m]) for m in models}

    parity_summary = None
    if tokenizer:
        from pipelines.eval import parity  # imports LLaMA-Factory: only when asked

        checked = parity.check(tokenizer, records, template=template)
        if not checked.ok:
            raise EvalError(checked.message)
        parity_summary = {"tokenizer": str(tokenizer), "template": template, "records": checked.n, "identical": True}

    answers: dict[bool, dict[str, list[str]]] = {c: {} for c in passes}
    figures: dict[bool, dict[str, dict[str, Any]]] = {c: {} for c in passes}
    golds = [r["output"] for r in records]
    for model in models:
        path = predictions_path(out, model)
        if fresh and (old := set_aside(path)):
            echo(f"evaluate: `{model}`: the saved answers were set aside in `{old}` (--fresh)")
        saved = load_done(path) if path.exists() else {}
        for constrained in passes:
            keys = [answer_key(q, identities[model]) for q in requests[constrained]]
            items = [(r["id"], k, q) for r, k, q in zip(records, keys, requests[constrained])]
            reused = sum((r["id"], k) in saved for r, k in zip(records, keys))
            label = f"`{model}`" + (" constrained" if constrained else "")
            if reused:
                echo(f"evaluate: {label}: {reused} of {len(items)} answers reused from `{path}` "
                     "(same requests, same model; `--fresh` asks again)")
            elif saved:
                echo(f"evaluate: {label}: none of the {len(saved)} saved answers in `{path}` are for these requests to "
                     "this model (other data, settings or weights); asking for all")
            else:
                echo(f"evaluate: {label}: no saved answers; asking for all {len(items)}")
            done = asyncio.run(_answer(base_url, api_key, timeout, concurrency, model, items, path, retry, progress,
                                       records if constrained else None, spec, form, offline))
            rows = [done[(r["id"], k)] for r, k in zip(records, keys)]
            answers[constrained][model] = [row["answer"] for row in rows]
            finish = [row.get("finish_reason") for row in rows]
            if constrained:
                _check_obeyed(spec, records, form, answers[True][model], base_url, model, finish)
            figures[constrained][model] = score(kind, answers[constrained][model], golds, finish)

    settings_constraint: dict[str, Any] = {"mode": constrain, "kind": spec.constraint if True in passes else None,
                           "form": form, "described": constraints.describe(spec) if True in passes else None}
    if True in passes and spec.constraint == "spans":
        settings_constraint["gold_outside_input"] = constraints.gold_outside_input(records)
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
            "constraint": settings_constraint,
            "models": identities,
        },
        "models": figures.get(False, {}),
    }
    if True in passes:
        metrics["constrained"] = figures[True]
    primary = answers[False] if False in passes else answers[True]
    if judge:
        metrics["judge"] = asyncio.run(
            _judge(base_url, api_key, timeout, concurrency, judge, models, records, primary, out, retry, progress,
                   model_identity(served[judge]))
        )

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    from pipelines.eval import report

    shown = {m: a for m, a in primary.items()}
    if False in passes and True in passes:
        shown.update({f"{m} (constrained)": a for m, a in answers[True].items()})
    report.write_report(out, metrics, pick_examples(records, shown))
    return metrics


def _check_obeyed(spec: tasks.Task, records: Sequence[dict[str, str]], form: str | None, answers: Sequence[str],
                  base_url: str, model: str, finish: Sequence[str | None] | None = None) -> None:
    """Every finished constrained answer lies in its constraint's language, or the run stops: a server that ignores
    `structured_outputs` (vLLM before 0.12 read other fields; some servers drop unknown ones silently) would
    otherwise pass unconstrained answers off as constrained."""
    for i, (r, a) in enumerate(zip(records, answers)):
        if finish is not None and finish[i] == "length":
            continue  # cut at max_tokens: incomplete by construction
        if not constraints.obeys(spec, r, form, a):
            raise EvalError(f"the server at `{base_url}` did not obey `structured_outputs` for `{model}`: record "
                            f"`{r['id']}` was answered {a[:60]!r}, which is not {constraints.describe(spec)}; serve "
                            "with vLLM >= 0.12 and a structured-output backend (`--structured-outputs-config.backend "
                            "xgrammar` in the serve config's `extra_args`) and rerun with `--fresh` (which sets the "
                            "answers it gave aside), or evaluate with `--constrain none`.")


async def _check(base_url: str, api_key: str | None, timeout: float,
                 wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
    async with make_client(base_url, api_key, timeout, 1) as client:
        return await check_served(client, base_url, wanted)


async def _answer(base_url, api_key, timeout, concurrency, model, items, path, retry, progress,
                  probe_records=None, spec=None, form=None, offline=False):
    """Answer `items`; for a constrained run (`probe_records` given) the first few first, checked against their
    constraint before the rest is sent, so a server that ignores the constraint costs seconds, not a whole run."""
    hint = ("if it refused the `structured_outputs` grammar, serve with vLLM >= 0.12 and a structured-output "
            "backend, or evaluate with `--constrain none`") if probe_records is not None else \
        "if the context is too long, pass a smaller `--max-tokens`"
    async with make_client(base_url, api_key, timeout, concurrency) as client:
        if offline:
            return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=False, offline=True)
        if probe_records is not None:
            probe = items[:constraints.PROBE]
            done = await answer_all(client, model, probe, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=False, rejected_hint=hint)
            rows = [done[(rid, key)] for rid, key, _ in probe]
            _check_obeyed(spec, probe_records[:len(probe)], form, [row["answer"] for row in rows], base_url, model,
                          [row.get("finish_reason") for row in rows])
        return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                retry=retry, progress=progress, rejected_hint=hint,
                                desc=f"{model} (constrained)" if probe_records is not None else None)


async def _judge(base_url, api_key, timeout, concurrency, judge, models, records, answers, out, retry, progress,
                 judge_identity):
    from pipelines.eval import judge as judging

    baseline, results = models[0], {}
    async with make_client(base_url, api_key, timeout, concurrency) as client:
        for cand in models[1:]:
            items = []
            for i, r in enumerate(records):
                q = judging.build_judge_request(
                    r["id"], user_text(r), r["output"], answers[baseline][i], answers[cand][i]
                )
                items.append((r["id"], answer_key(q, judge_identity), q))
            path = out / "judge" / model_dir_name(judge) / f"{model_dir_name(cand)}_vs_{model_dir_name(baseline)}.jsonl"
            done = await answer_all(client, judge, items, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=progress, desc=f"{judge}: {cand} vs {baseline}")
            verdicts = [judging.parse_verdict(done[(rid, key)]["answer"]) for rid, key, _ in items]
            outcomes = [judging.outcome(rid, v) for (rid, _, _), v in zip(items, verdicts)]
            results[cand] = judging.tally(outcomes)
    return {"judge": judge, "baseline": baseline, "models": results}


# ---------------------------------------------------------------- CLI


def _at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{text}` is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"`{text}` must be at least {least}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"`{text}` must be a positive number of seconds")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines eval", description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--task", required=True, help=f"how answers are scored: one of {', '.join(tasks.TASKS)}")
    ap.add_argument("--data", required=True, help="alpaca JSON list (e.g. data/cluener_val.json)")
    ap.add_argument("--model", action="append", required=True, dest="models",
                    help="a served model name (base or adapter); repeat; the first is the baseline")
    ap.add_argument("--out", required=True, help="output folder: <model>/predictions.jsonl, metrics.json, report.md")
    ap.add_argument("--concurrency", type=_at_least(1), default=16, help="requests in flight at once (default 16)")
    ap.add_argument("--limit", type=_at_least(1), help="evaluate the first N records only")
    ap.add_argument("--api-key-env", default="VLLM_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--max-tokens", type=_at_least(1), help="max_tokens per answer (default: from the gold answers)")
    ap.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, help="read timeout per request, seconds")
    ap.add_argument("--retries", type=_at_least(1), default=RetryPolicy.attempts,
                    help="tries per request on transient errors")
    ap.add_argument("--constrain", choices=constraints.MODES, default="none",
                    help="none (default); auto: spans of the input for NER, one of the candidates for classification; "
                         "both: each model plainly and constrained")
    ap.add_argument("--fresh", action="store_true", help="set the saved answers aside and ask for all of them again")
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
            constrain=args.constrain, fresh=args.fresh,
        )
    except EvalError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evaluate: interrupted; the answers so far are kept: rerun the same command to resume.", file=sys.stderr)
        return 130
    keys = tasks.get(metrics["task"]).summary
    for section, suffix in (("models", ""), ("constrained", " (constrained)")):
        for model, m in metrics.get(section, {}).items():
            print(f"{model}{suffix}: n={m['n']} " + " ".join(f"{k}={m[k]:.4f}" for k in keys))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
