"""Train/serve prompt parity: LLaMA-Factory's template vs the model's own chat template, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.eval.evaluate import load_records
from pipelines.eval.parity import check, describe_difference, first_difference, main

NER_DATA = Path(__file__).parent / "fixtures" / "eval_cluener.json"

DIFF_CASES = [
    # (name, a, b, first difference)
    ("identical", [1, 2, 3], [1, 2, 3], None),
    ("both empty", [], [], None),
    ("first token", [9, 2], [1, 2], 0),
    ("middle", [1, 2, 3], [1, 5, 3], 1),
    ("b longer", [1, 2], [1, 2, 3], 2),
    ("a longer", [1, 2, 3], [1, 2], 2),
]


@pytest.mark.parametrize("name,a,b,expected", DIFF_CASES, ids=[c[0] for c in DIFF_CASES])
def test_first_difference(name, a, b, expected):
    assert first_difference(a, b) == expected


def test_describe_difference_names_record_position_and_text():
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)
    msg = describe_difference("r1", [0, 1, 2, 3], [0, 1, 4], decode, decode, context=2)
    assert msg == ("record `r1`: the training prompt (4 tokens) and the serving prompt (3 tokens) differ at token 2: "
                   "training has 'ab' then 'cd', serving has 'ab' then 'e'; align `template` in the training config "
                   "with the served chat template.")


def test_tiny_model_renders_identically_with_qwen_template(tiny_model_dir):
    report = check(str(tiny_model_dir), load_records(NER_DATA), template="qwen")
    assert report.ok, report.message
    assert report.n == 12  # records with and without a system prompt and an input


def test_a_mismatched_template_is_reported_at_its_first_difference(tiny_model_dir, capsys):
    # chatml has no default system prompt; Qwen2.5's chat template adds one: the record without a system differs
    rc = main(["--model", str(tiny_model_dir), "--data", str(NER_DATA), "--template", "chatml"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "parity: MISMATCH: record `ner-04`:" in err and "differ at token 1" in err
