"""Stage 1 of the evaluator, pure: an alpaca record → the chat-completion request, its key, its token budget.

max_tokens (one value for every record and model, so figures compare): the longest gold answer in UTF-8 bytes
+ 16 (a byte-level BPE token covers at least one byte, so a gold-length answer is never cut), lowered to fit
the context the server reports in `/v1/models` (`max_model_len`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.common.io import json_sha256
from pipelines.data.records import build_messages, user_text
from pipelines.eval import EvalError

#: Tokens added to the longest gold answer's UTF-8 length (an upper bound of its byte-level BPE tokens).
MAX_TOKENS_MARGIN = 16
#: Tokens the chat template adds around system + user text (role markers, Qwen's default system prompt).
PROMPT_OVERHEAD_TOKENS = 128


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
    return json_sha256(request)
