"""`make eval`: score served models through the OpenAI-compatible API, resumably.

    python -m pipelines eval --base-url http://127.0.0.1:8000/v1 --task cluener --data data/cluener_val.json \
        --model tiny-base --model cluener --out results/eval [--concurrency 16] [--limit N] [--max-tokens N]

Four stages: build each request from its alpaca record (pure), send it (`openai.AsyncOpenAI`, bounded
concurrency, retries with backoff), parse the answer and score it (pure, `pipelines.eval.scoring`). Every answer
is appended to `OUT/<model>/predictions.jsonl` keyed by record id and the sha256 of the request and of the model
behind the name (`pipelines.eval.predictions`), so a rerun sends only what is missing and a killed run loses
nothing but its requests in flight. Writes `OUT/metrics.json` and `OUT/report.md`, and beside each model's
predictions its per-record statistics (`stats.json`), from which every figure gets a bootstrap interval and every
pair of models a paired comparison (`pipelines.eval.compare`, `python -m pipelines compare OUT`).

max_tokens: one value for every record and model, so that figures compare (`pipelines.eval.prompts`);
`--max-tokens` overrides it.

It stays one module because it is the run itself, in order, over one `EvalSettings` and the `Pass`es it asks for
(plain, constrained): plan (check the settings and the data, ask the server what it serves, build the requests),
answer (check obedience), score (figures, intervals, comparisons), write; each step a call into the small modules
beside it.
The evaluator knows the server only through HTTP; it imports neither vLLM nor LLaMA-Factory. With
`--tokenizer PATH` it first runs the train/serve prompt parity check (`pipelines.eval.parity`, imported only then).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from pipelines.common.io import file_sha256, write_json
from pipelines.data.records import RecordError, load_records, user_text
from pipelines.eval import EvalError, compare, constraints, significance, tasks
from pipelines.eval.client import (
    CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
    answer_all,
    check_served,
    make_client,
    normalize_base_url,
)
from pipelines.eval.grammars import extra_body
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
EVAL_SPEC_VERSION = "3"  # 3: per-record statistics, intervals and comparisons
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


def check_settings(s: EvalSettings) -> None:
    """The numbers and modes of a run, range-checked (the CLI checks the same at parse time)."""
    for name, value, least in (("--concurrency", s.concurrency, 1), ("--limit", s.limit, 1),
                               ("--max-tokens", s.max_tokens, 1), ("--retries", s.retry.attempts, 1),
                               ("--resamples", s.resamples, 1), ("--seed", s.seed, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise EvalError(f"`{name} {value}` must be a whole number of at least {least}.")
    if not (isinstance(s.timeout, (int, float)) and s.timeout > 0 and s.timeout < float("inf")):
        raise EvalError(f"`--timeout {s.timeout}` must be a positive number of seconds.")
    if not (isinstance(s.level, float) and 0 < s.level < 1):
        raise EvalError(f"the confidence level {s.level} must lie strictly between 0 and 1.")
    if s.constrain not in constraints.MODES:
        raise EvalError(f"`--constrain {s.constrain}` is not one of {', '.join(constraints.MODES)}.")
    if not s.models:
        raise EvalError("no `--model` given: name the served base model and/or adapters to evaluate.")
    if s.judge and len(s.models) < 2:
        raise EvalError("`--judge` compares the first `--model` (the baseline) with the others: pass at least two.")
    folders = [model_dir_name(m).lower() for m in s.models]
    if len(set(folders)) < len(folders):
        raise EvalError(f"the models {', '.join(f'`{m}`' for m in s.models)} would share a predictions folder on a "
                        "case-insensitive file system: evaluate them into separate `--out` folders.")


class Pass(Enum):
    """How a model is asked: plainly, or constrained to the task's answer language (`--constrain`)."""

    PLAIN = "plain"
    CONSTRAINED = "constrained"

    @property
    def section(self) -> str:
        """metrics.json's key for this pass's figures: `models` or `constrained`."""
        return compare.SECTIONS[self.value][0]

    def entry(self, model: str) -> str:
        """The name of a model's figures in this pass, as the report and the comparisons name them."""
        return compare.entry_name(model, self.value)


#: `--constrain` mode → the passes it runs on a task with a constraint (a task without one runs plainly only).
PASSES = {"none": (Pass.PLAIN,), "auto": (Pass.CONSTRAINED,), "both": (Pass.PLAIN, Pass.CONSTRAINED)}


@dataclass(frozen=True)
class EvalSettings:
    """One evaluation: `run_eval`'s arguments and the CLI's options. `constrain`: `none` (plain requests), `auto`
    (the task's constraint where it has one: spans of the input for NER, one of the candidates for classification),
    `both` (each model plainly and constrained). `fresh`: set the saved answers aside and ask for all of them again.
    `resamples`, `seed`, `level`: the bootstrap intervals and paired comparisons (`pipelines.eval.significance`)."""

    base_url: str
    task: str
    data: str | Path
    models: Sequence[str]
    out: str | Path
    concurrency: int = 16
    limit: int | None = None
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    judge: str | None = None
    tokenizer: str | None = None
    template: str = "qwen"
    retry: RetryPolicy = DEFAULT_RETRY
    progress: bool = True
    constrain: str = "none"
    fresh: bool = False
    resamples: int = significance.DEFAULT_RESAMPLES
    seed: int = significance.DEFAULT_SEED
    level: float = significance.DEFAULT_LEVEL

    @property
    def resampling(self) -> compare.Resampling:
        return compare.Resampling(self.level, self.resamples, self.seed)

    @property
    def asked(self) -> list[str]:
        """Every model the server must serve: the evaluated ones, then the judge."""
        return [*self.models, *([self.judge] if self.judge else [])]


@dataclass(frozen=True)
class Plan:
    """What the run sends, settled before the first request."""

    spec: tasks.Task
    records: list[dict[str, str]]
    passes: tuple[Pass, ...]
    form: str | None  # NER constrained: the data's answer form
    requests: dict[Pass, list[dict[str, Any]]]  # one a record, per pass
    served: dict[str, dict[str, Any]]  # the model cards
    identities: dict[str, dict[str, Any]]  # what an answer key fingerprints of each evaluated model
    max_tokens: int
    max_tokens_from: str
    parity: dict[str, Any] | None
    offline: bool  # scoring saved answers, no server

    @property
    def golds(self) -> list[str]:
        return [r["output"] for r in self.records]


@dataclass(frozen=True)
class Answers:
    """One model's answers in one pass, in record order."""

    texts: list[str]
    finish: list[str | None]


@dataclass(frozen=True)
class Job:
    """One model's requests of one pass, and where their answers are kept."""

    model: str
    kind: Pass
    items: list[tuple[str, str, dict[str, Any]]]  # (record id, answer key, request)
    path: Path


@dataclass(frozen=True)
class Scored:
    """Figures (with their intervals) and per-record statistics per pass and model, and the comparisons."""

    figures: dict[Pass, dict[str, dict[str, Any]]]
    stats: dict[Pass, dict[str, dict[str, Any]]]
    comparisons: list[dict[str, Any]]


def run_eval(base_url: str, task: str, data: str | Path, models: Sequence[str], out: str | Path, *,
             served: dict[str, dict[str, Any]] | None = None, echo: Callable[[str], None] | None = None,
             **options: Any) -> dict[str, Any]:
    """Evaluate `models` served at `base_url` on `data`; write OUT/metrics.json, OUT/report.md and each model's
    statistics; the metrics. `options`: the other fields of `EvalSettings` (concurrency, limit, constrain, …).

    `served`: the model cards (`root`, `parent`, `max_model_len` per name) to score saved answers with and no server
    at all; a missing answer raises NotSaved. `echo`: where progress lines go (default: stderr)."""
    return evaluate(EvalSettings(base_url, task, data, list(models), out, **options), served=served, echo=echo)


def evaluate(settings: EvalSettings, *, served: dict[str, dict[str, Any]] | None = None,
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The run, in order: plan, answer, score, write (`run_eval` with the settings as one object)."""
    say = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    settings = replace(settings, base_url=normalize_base_url(settings.base_url),
                       models=list(dict.fromkeys(settings.models)))
    plan = make_plan(settings, served)
    answers = answer(settings, plan, say)
    scored = score_answers(settings, plan, answers)
    metrics = build_metrics(settings, plan, scored)
    if settings.judge:
        metrics["judge"] = asyncio.run(_judge(settings, plan, answers[plan.passes[0]]))
    write(settings, plan, metrics, answers, scored)
    return metrics


# ---------------------------------------------------------------- plan


def make_plan(s: EvalSettings, served: dict[str, dict[str, Any]] | None) -> Plan:
    """Check the settings and the data, ask the server what it serves, build every request."""
    spec = tasks.get(s.task)
    check_settings(s)
    passes = PASSES[s.constrain] if spec.constraint is not None else (Pass.PLAIN,)
    try:
        records = load_records(s.data, s.limit)
    except RecordError as e:
        raise EvalError(str(e)) from None
    check_data(spec, records, s.data)
    constrained = Pass.CONSTRAINED in passes
    form = constraints.answer_form(records, str(s.data)) if constrained and spec.constraint == "spans" else None
    limits = [constraints.record_constraint(spec, r, form) for r in records] if constrained else None
    cards = _cards(s, served)
    n_tokens, tokens_from = _max_tokens(s, records, cards)
    plain = [build_request(r, n_tokens) for r in records]
    requests = {Pass.PLAIN: plain}
    if limits is not None:
        requests[Pass.CONSTRAINED] = [{**q, "extra_body": extra_body(so)} for q, so in zip(plain, limits)]
    return Plan(spec, records, passes, form, requests, cards, {m: model_identity(cards[m]) for m in s.models},
                n_tokens, tokens_from, _parity(s, records), served is not None)


def _cards(s: EvalSettings, served: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The model cards of every model asked for: from the server, or as given (offline)."""
    if served is None:
        return asyncio.run(_check(s.base_url, s.api_key, s.timeout, s.asked))
    missing = [m for m in s.asked if m not in served]
    if missing:
        raise NotSaved(f"no model card given for {', '.join(missing)}.")
    return served


def _max_tokens(s: EvalSettings, records: Sequence[dict[str, str]],
                cards: Mapping[str, Mapping[str, Any]]) -> tuple[int, str]:
    """max_tokens for every request, and where it comes from."""
    if s.max_tokens:
        return s.max_tokens, "--max-tokens"
    contexts = [c["max_model_len"] for c in cards.values() if isinstance(c["max_model_len"], int)]
    context = min(contexts) if contexts else None
    estimate = estimate_max_tokens([r["output"] for r in records])
    n_tokens = fit_max_tokens(estimate, context, prompt_token_bound(records))
    tokens_from = f"data: longest gold answer in UTF-8 bytes + {MAX_TOKENS_MARGIN}"
    if n_tokens < estimate:
        tokens_from += (f", lowered from {estimate} to fit the served context of {context} tokens "
                        f"(prompts up to {prompt_token_bound(records)})")
    return n_tokens, tokens_from


def _parity(s: EvalSettings, records: Sequence[dict[str, str]]) -> dict[str, Any] | None:
    """With `tokenizer`: the train/serve prompt parity check (it imports LLaMA-Factory: only when asked)."""
    if not s.tokenizer:
        return None
    from pipelines.eval import parity

    checked = parity.check(s.tokenizer, records, template=s.template)
    if not checked.ok:
        raise EvalError(checked.message)
    return {"tokenizer": str(s.tokenizer), "template": s.template, "records": checked.n, "identical": True}


# ---------------------------------------------------------------- answer


def answer(s: EvalSettings, plan: Plan, echo: Callable[[str], None]) -> dict[Pass, dict[str, Answers]]:
    """Every model's answers in every pass: the saved ones reused, the rest asked for (and saved as they come)."""
    out: dict[Pass, dict[str, Answers]] = {p: {} for p in plan.passes}
    for model in s.models:
        path = predictions_path(Path(s.out), model)
        if s.fresh and (old := set_aside(path)):
            echo(f"evaluate: `{model}`: the saved answers were set aside in `{old}` (--fresh)")
        saved = load_done(path) if path.exists() else {}
        for kind in plan.passes:
            out[kind][model] = _answer_pass(s, plan, _job(plan, model, kind, path), saved, echo)
    return out


def _job(plan: Plan, model: str, kind: Pass, path: Path) -> Job:
    requests = plan.requests[kind]
    keys = [answer_key(q, plan.identities[model]) for q in requests]
    return Job(model, kind, [(r["id"], k, q) for r, k, q in zip(plan.records, keys, requests)], path)


def _answer_pass(s: EvalSettings, plan: Plan, job: Job, saved: Mapping[tuple[str, str], Any],
                 echo: Callable[[str], None]) -> Answers:
    reused = sum((rid, key) in saved for rid, key, _ in job.items)
    label = f"`{job.model}`" + (" constrained" if job.kind is Pass.CONSTRAINED else "")
    if reused:
        echo(f"evaluate: {label}: {reused} of {len(job.items)} answers reused from `{job.path}` "
             "(same requests, same model; `--fresh` asks again)")
    elif saved:
        echo(f"evaluate: {label}: none of the {len(saved)} saved answers in `{job.path}` are for these requests to "
             "this model (other data, settings or weights); asking for all")
    else:
        echo(f"evaluate: {label}: no saved answers; asking for all {len(job.items)}")
    done = asyncio.run(_answer(s, plan, job))
    rows = [done[(rid, key)] for rid, key, _ in job.items]
    got = Answers([row["answer"] for row in rows], [row.get("finish_reason") for row in rows])
    if job.kind is Pass.CONSTRAINED:
        _check_obeyed(plan.spec, plan.records, plan.form, got.texts, s.base_url, job.model, got.finish)
    return got


# ---------------------------------------------------------------- score and write


def score_answers(s: EvalSettings, plan: Plan, answers: Mapping[Pass, Mapping[str, Answers]]) -> Scored:
    """Each entry's figures with their bootstrap intervals, its per-record statistics, and every pair's comparison."""
    golds, how = plan.golds, s.resampling
    figures: dict[Pass, dict[str, dict[str, Any]]] = {p: {} for p in plan.passes}
    stats: dict[Pass, dict[str, dict[str, Any]]] = {p: {} for p in plan.passes}
    for kind in plan.passes:
        for model, got in answers[kind].items():
            stats[kind][model] = compare.record_stats(plan.spec, got.texts, golds, got.finish)
            figures[kind][model] = {**score(plan.spec.kind, got.texts, golds, got.finish),
                                    "intervals": compare.intervals(plan.spec, stats[kind][model], how)}
    entries = {kind.entry(m): stats[kind][m] for m in s.models for kind in plan.passes}
    return Scored(figures, stats, compare.comparisons(plan.spec, entries, how))


def build_metrics(s: EvalSettings, plan: Plan, scored: Scored) -> dict[str, Any]:
    """metrics.json's content (eval spec `EVAL_SPEC_VERSION`; keys in docs/CONTRACTS.md)."""
    spec, constrained = plan.spec, Pass.CONSTRAINED in plan.passes
    constraint: dict[str, Any] = {"mode": s.constrain, "kind": spec.constraint if constrained else None,
                                  "form": plan.form, "described": constraints.describe(spec) if constrained else None}
    if constrained and spec.constraint == "spans":
        constraint["gold_outside_input"] = constraints.gold_outside_input(plan.records)
    metrics: dict[str, Any] = {
        "eval_spec_version": EVAL_SPEC_VERSION,
        "task": s.task,
        "kind": spec.kind,
        "scale": spec.scale,
        "data": {"path": str(s.data), "sha256": file_sha256(s.data), "n": len(plan.records), "limit": s.limit},
        "settings": {
            "base_url": s.base_url,
            "temperature": 0,
            "max_tokens": plan.max_tokens,
            "max_tokens_from": plan.max_tokens_from,
            "system": "the record's `system` when non-empty, else none (the chat template's default)",
            "user": "instruction, then \"\\n\" + input when input is non-empty",
            "concurrency": s.concurrency,
            "timeout_s": s.timeout,
            "connect_timeout_s": CONNECT_TIMEOUT_S,
            "parity": plan.parity,
            "constraint": constraint,
            "models": plan.identities,
            "intervals": s.resampling.describe(),
        },
        "models": scored.figures.get(Pass.PLAIN, {}),
    }
    if constrained:
        metrics["constrained"] = scored.figures[Pass.CONSTRAINED]
    metrics["comparisons"] = scored.comparisons
    return metrics


def write(s: EvalSettings, plan: Plan, metrics: dict[str, Any], answers: Mapping[Pass, Mapping[str, Answers]],
          scored: Scored) -> None:
    """Each model's statistics beside its predictions, OUT/metrics.json, OUT/report.md (and examples, plots)."""
    from pipelines.eval import report

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in s.models:
        compare.save_stats(out, model, {p.value: scored.stats[p][model] for p in plan.passes}, metrics["data"])
    write_json(out / "metrics.json", metrics)
    primary = plan.passes[0]
    shown = {m: answers[primary][m].texts for m in s.models}
    if len(plan.passes) > 1:
        shown.update({Pass.CONSTRAINED.entry(m): answers[Pass.CONSTRAINED][m].texts for m in s.models})
    report.write_report(out, metrics, pick_examples(plan.records, shown))


def _check_obeyed(spec: tasks.Task, records: Sequence[dict[str, str]], form: str | None, answers: Sequence[str],
                  base_url: str, model: str, finish: Sequence[str | None] | None = None) -> None:
    """Every finished constrained answer lies in its constraint's language, and every answer cut at max_tokens
    (`finish_reason: length`) begins one, or the run stops: a server that ignores `structured_outputs` (vLLM before
    0.12 read other fields; some servers drop unknown ones silently) would otherwise pass unconstrained answers off
    as constrained."""
    for i, (r, a) in enumerate(zip(records, answers)):
        cut = finish is not None and finish[i] == "length"
        if not constraints.obeys(spec, r, form, a, cut=cut):
            what = ", cut at max_tokens, begins no answer of" if cut else " is not"
            raise EvalError(f"the server at `{base_url}` did not obey `structured_outputs` for `{model}`: record "
                            f"`{r['id']}` was answered {a[:60]!r}, which{what} {constraints.describe(spec)}; serve "
                            "with vLLM >= 0.12 and a structured-output backend (`--structured-outputs-config.backend "
                            "xgrammar` in the serve config's `extra_args`) and rerun with `--fresh` (which sets the "
                            "answers it gave aside), or evaluate with `--constrain none`.")


async def _check(base_url: str, api_key: str | None, timeout: float,
                 wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
    async with make_client(base_url, api_key, timeout, 1) as client:
        return await check_served(client, base_url, wanted)


async def _answer(s: EvalSettings, plan: Plan, job: Job) -> dict[tuple[str, str], dict[str, Any]]:
    """Answer `job`; a constrained pass the first few first, checked against their constraint before the rest is
    sent, so a server that ignores the constraint costs seconds, not a whole run."""
    constrained = job.kind is Pass.CONSTRAINED
    hint = ("if it refused the `structured_outputs` grammar, serve with vLLM >= 0.12 and a structured-output "
            "backend, or evaluate with `--constrain none`") if constrained else \
        "if the context is too long, pass a smaller `--max-tokens`"
    model, items, path, base_url, concurrency, retry = job.model, job.items, job.path, s.base_url, s.concurrency, s.retry
    async with make_client(base_url, s.api_key, s.timeout, concurrency) as client:
        if plan.offline:
            return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=False, offline=True)
        if constrained:
            probe = items[:constraints.PROBE]
            done = await answer_all(client, model, probe, path, base_url=base_url, concurrency=concurrency,
                                    retry=retry, progress=False, rejected_hint=hint)
            rows = [done[(rid, key)] for rid, key, _ in probe]
            _check_obeyed(plan.spec, plan.records[:len(probe)], plan.form, [row["answer"] for row in rows], base_url,
                          model, [row.get("finish_reason") for row in rows])
        return await answer_all(client, model, items, path, base_url=base_url, concurrency=concurrency,
                                retry=retry, progress=s.progress, rejected_hint=hint,
                                desc=f"{model} (constrained)" if constrained else None)


async def _judge(s: EvalSettings, plan: Plan, answers: Mapping[str, Answers]) -> dict[str, Any]:
    """The judge's verdicts on each later model against the first (the baseline), tallied."""
    from pipelines.eval import judge as judging

    assert s.judge is not None  # only called with a judge
    judge, identity = s.judge, model_identity(plan.served[s.judge])
    baseline, results = s.models[0], {}
    async with make_client(s.base_url, s.api_key, s.timeout, s.concurrency) as client:
        for cand in s.models[1:]:
            items = []
            for i, r in enumerate(plan.records):
                q = judging.build_judge_request(
                    r["id"], user_text(r), r["output"], answers[baseline].texts[i], answers[cand].texts[i]
                )
                items.append((r["id"], answer_key(q, identity), q))
            path = (Path(s.out) / "judge" / model_dir_name(judge) /
                    f"{model_dir_name(cand)}_vs_{model_dir_name(baseline)}.jsonl")
            done = await answer_all(client, judge, items, path, base_url=s.base_url, concurrency=s.concurrency,
                                    retry=s.retry, progress=s.progress, desc=f"{judge}: {cand} vs {baseline}")
            verdicts = [judging.parse_verdict(done[(rid, key)]["answer"]) for rid, key, _ in items]
            outcomes = [judging.outcome(rid, v) for (rid, _, _), v in zip(items, verdicts)]
            results[cand] = judging.tally(outcomes)
    return {"judge": judge, "baseline": baseline, "models": results}


# ---------------------------------------------------------------- CLI


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
    ap.add_argument("--concurrency", type=compare.at_least(1), default=16, help="requests in flight at once (default 16)")
    ap.add_argument("--limit", type=compare.at_least(1), help="evaluate the first N records only")
    ap.add_argument("--api-key-env", default="VLLM_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--max-tokens", type=compare.at_least(1), help="max_tokens per answer (default: from the gold answers)")
    ap.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, help="read timeout per request, seconds")
    ap.add_argument("--retries", type=compare.at_least(1), default=RetryPolicy.attempts,
                    help="tries per request on transient errors")
    ap.add_argument("--constrain", choices=constraints.MODES, default="none",
                    help="none (default); auto: spans of the input for NER, one of the candidates for classification; "
                         "both: each model plainly and constrained")
    ap.add_argument("--fresh", action="store_true", help="set the saved answers aside and ask for all of them again")
    ap.add_argument("--judge", help="a served model that judges each later --model against the first (win rate)")
    ap.add_argument("--tokenizer", help="model folder: check train/serve prompt parity with it before evaluating")
    ap.add_argument("--template", default="qwen", help="LLaMA-Factory template for the parity check (default qwen)")
    compare.add_options(ap)
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.eval import report

    args = parse_args(argv)
    try:
        metrics = run_eval(
            args.base_url, args.task, args.data, args.models, args.out,
            concurrency=args.concurrency, limit=args.limit, api_key=os.environ.get(args.api_key_env),
            max_tokens=args.max_tokens, timeout=args.timeout, judge=args.judge, tokenizer=args.tokenizer,
            template=args.template, retry=RetryPolicy(attempts=args.retries), progress=not args.no_progress,
            constrain=args.constrain, fresh=args.fresh, resamples=args.resamples, seed=args.seed,
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
            print(f"{model}{suffix}: n={m['n']} " + " ".join(
                f"{k}={report.figure(k, m[k], (m.get('intervals') or {}).get(k))}" for k in keys))
    if metrics["settings"].get("intervals"):
        print(f"({metrics['settings']['intervals']['level'] * 100:g}% intervals in brackets; the comparisons are in "
              "metrics.json and report.md)")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
