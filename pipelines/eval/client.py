"""Stage 2 of the evaluator: send requests with the official `openai` client, bounded concurrency, retries with
backoff, and every answer appended to its predictions file as it arrives."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.eval import EvalError
from pipelines.eval.predictions import NotSaved, load_done

#: The connect timeout: httpx's default of 5 s fails on a busy small machine at high concurrency.
CONNECT_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 600.0


def normalize_base_url(url: str) -> str:
    """The OpenAI base URL, ending in `/v1` (appended when missing)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries per request on transient errors (connection, timeout, 408/409/429/5xx)
    backoff_s: float = 1.0  # first wait; doubles each retry
    max_backoff_s: float = 30.0


class _Failure(Exception):
    def __init__(self, record_id: str, error: Exception, transient: bool, malformed: str | None = None):
        super().__init__(str(error))
        self.record_id, self.error, self.transient = record_id, error, transient
        self.malformed = malformed  # what was wrong with an HTTP 200 that is no chat completion of this model


def _malformed(resp: Any, model: str) -> str | None:
    """What makes a 200 answer no chat completion of `model` (None when it is one): a body that is not a JSON
    object (a proxy's HTML page arrives as a str), no `choices`, a choice without a message, or another `model`."""
    if isinstance(resp, (str, bytes)) or not hasattr(resp, "choices"):
        text = resp if isinstance(resp, str) else resp.decode("utf-8", "replace") if isinstance(resp, bytes) else ""
        start = " ".join(text.split())[:40]
        return f"a body that is not a JSON object{f' (it starts `{start}`)' if start else ''}"
    if not resp.choices:
        return "no choices (`choices: []`)"
    message = getattr(resp.choices[0], "message", None)
    if message is None or not isinstance(getattr(message, "content", None), (str, type(None))):
        return "a choice without a message"
    answered = getattr(resp, "model", None)
    if answered and answered != model:  # vLLM echoes the adapter's name, and the base's served name
        return f"an answer from model `{answered}`, not `{model}`"
    return None


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
        except ValueError as e:  # JSONDecodeError: a truncated or non-JSON body sent as application/json
            raise _Failure(record_id, e, transient=False, malformed=f"a body that is not valid JSON ({e})") from e
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
        wrong = _malformed(resp, model)
        if wrong:
            raise _Failure(record_id, ValueError(wrong), transient=False, malformed=wrong)
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


async def check_served(client: Any, base_url: str, wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """GET /models; each served name with what vLLM says of it: `max_model_len` (listed for base models, else
    None), `root` (the model or adapter path) and `parent` (an adapter's base).

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
    served = {m.id: {k: getattr(m, k, None) for k in ("max_model_len", "root", "parent")} for m in page.data}
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
    rejected_hint: str = "if the context is too long, pass a smaller `--max-tokens`",
    offline: bool = False,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Answer every (id, key, request) not yet in `path`, appending each answer as it arrives; all rows by key.
    `rejected_hint` ends the sentence when the server refuses a request outright (HTTP 400 and the like);
    `offline`: send nothing, and raise NotSaved when an answer is missing."""
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(path)
    wanted = {(rid, key): req for rid, key, req in items}
    todo = [(rid, key, req) for (rid, key), req in wanted.items() if (rid, key) not in done]
    if offline and todo:
        raise NotSaved(f"{len(todo)} of {len(wanted)} answers of `{model}` are not saved in `{path}`.")
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
                so = (req.get("extra_body") or {}).get("structured_outputs")
                if so:  # which constraint the server was asked to obey ("grammar", "choice")
                    row["constraint"] = next(iter(so))
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                done[(rid, key)] = row
                bar.update(1)

        await asyncio.gather(*(one(*t) for t in todo))
    if failures:
        f = failures[0]
        kept = sum(1 for k in wanted if k in done)
        if f.malformed:
            raise EvalError(
                f"the server at `{base_url}` answered record `{f.record_id}` for `{model}` with {f.malformed}, not "
                f"an OpenAI chat completion of that model; {kept} of {len(wanted)} answers are kept in `{path}`: "
                "check that `--base-url` reaches the vLLM server itself (not a proxy or another service)."
            )
        if f.transient:
            raise EvalError(
                f"the server at `{base_url}` stopped answering while evaluating `{model}` ({describe(f.error)}); "
                f"{kept} of {len(wanted)} answers are kept in `{path}`: restart the server and rerun the same "
                f"command to resume."
            )
        raise EvalError(
            f"the server rejected record `{f.record_id}` for `{model}` ({describe(f.error)}); {kept} of "
            f"{len(wanted)} answers are kept in `{path}`: {rejected_hint}."
        )
    return done
