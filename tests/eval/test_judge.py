"""Pairwise judging: verdict parsing, position swapping and the win rate (pure)."""

from __future__ import annotations

import pytest

from pipelines.eval.judge import build_judge_request, candidate_is_a, outcome, parse_verdict, tally

VERDICTS = [
    ("A", "A"), ("b", "B"), (" Tie.", "tie"), ("**A** is better", "A"), ("Answer B", "B"), ('"A"', "A"),
    ("[B]", "B"), ("Both are fine", None), ("", None), ("AB", None), ("Neither", None),
]


@pytest.mark.parametrize("text,expected", VERDICTS)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_positions_are_swapped_by_record_and_mapped_back():
    ids = [f"r{i}" for i in range(40)]
    swapped = [i for i in ids if candidate_is_a(i)]
    assert 0 < len(swapped) < len(ids)  # both orders occur
    for rid in ids[:6]:
        req = build_judge_request(rid, "q", "ref", baseline="BASE", candidate="CAND")
        prompt = req["messages"][-1]["content"]
        a_is_cand = prompt.index("CAND") < prompt.index("BASE")
        assert a_is_cand == candidate_is_a(rid)
        assert outcome(rid, "A" if a_is_cand else "B") == "win"
        assert outcome(rid, "B" if a_is_cand else "A") == "loss"
        assert outcome(rid, "tie") == "tie" and outcome(rid, None) is None
        assert req["temperature"] == 0


def test_tally():
    assert tally(["win", "win", "loss", "tie", None]) == {
        "wins": 2, "losses": 1, "ties": 1, "invalid": 1, "win_rate": 2.5 / 4}
    assert tally([None])["win_rate"] == 0.0
