"""Pairwise judging (optional `--judge MODEL` of `pipelines.eval.evaluate`): pure request building and verdict parsing.

A served judge model sees the request, the reference answer and two answers, A and B, and replies `A`, `B` or
`tie`. Which of baseline and candidate is A is decided per record by a hash of its id (half each way), so the
judge's position bias cancels out over the data. Win rate = (wins + ties / 2) / decided verdicts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

JUDGE_MAX_TOKENS = 16
JUDGE_SYSTEM = "You are a strict, impartial judge of answers. You reply with one word."
JUDGE_PROMPT = """Compare two answers to the request below, using the reference answer as the standard.

[Request]
{request}

[Reference answer]
{reference}

[Answer A]
{a}

[Answer B]
{b}

Which answer is better? Reply with exactly one of: A, B, tie."""


def candidate_is_a(record_id: str) -> bool:
    """Whether the candidate (not the baseline) is shown as answer A for this record."""
    return int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16) % 2 == 1


def build_judge_request(record_id: str, request: str, reference: str, baseline: str, candidate: str) -> dict:
    """The chat request that asks the judge to compare `baseline` and `candidate` (temperature 0)."""
    a, b = (candidate, baseline) if candidate_is_a(record_id) else (baseline, candidate)
    prompt = JUDGE_PROMPT.format(request=request, reference=reference, a=a, b=b)
    return {
        "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}],
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0,
    }


_VERDICT = re.compile(r"^[\s*\"'`\[(]*(?:answer\s+)?(a|b|tie)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """`"A"`, `"B"`, `"tie"` from the judge's reply, or None when it says none of them first."""
    m = _VERDICT.match(text)
    if not m:
        return None
    v = m.group(1).lower()
    return "tie" if v == "tie" else v.upper()


def outcome(record_id: str, verdict: str | None) -> str | None:
    """The verdict seen from the candidate: `"win"`, `"loss"`, `"tie"` or None (no verdict)."""
    if verdict is None or verdict == "tie":
        return verdict
    return "win" if (verdict == "A") == candidate_is_a(record_id) else "loss"


def tally(outcomes: Iterable[str | None]) -> dict[str, Any]:
    """Counts of wins, losses, ties and unparsable verdicts, and the candidate's win rate in [0, 1]."""
    counts = {"win": 0, "loss": 0, "tie": 0, None: 0}
    for o in outcomes:
        counts[o] += 1
    decided = counts["win"] + counts["loss"] + counts["tie"]
    return {
        "wins": counts["win"],
        "losses": counts["loss"],
        "ties": counts["tie"],
        "invalid": counts[None],
        "win_rate": (counts["win"] + counts["tie"] / 2) / decided if decided else 0.0,
    }
