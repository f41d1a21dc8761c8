"""Scoring on hand-computed cases: every expected figure below is worked out by hand in the comments."""

from __future__ import annotations

import pytest

from pipelines.eval.scoring import (
    mean_length,
    parse_entities,
    prf,
    score_classification,
    score_generation,
    score_ner,
    similarity,
)

E = frozenset

PARSE_CASES = [
    # (name, answer, entities, valid_json, trailing_text)
    ("dict form", '{"name": ["叶老桂"], "company": ["浙商银行"]}',
     E({("name", "叶老桂"), ("company", "浙商银行")}), True, False),
    ("list form", '[{"label": "name", "text": "叶老桂"}, {"label": "company", "text": "浙商银行"}]',
     E({("name", "叶老桂"), ("company", "浙商银行")}), True, False),
    ("leading and trailing whitespace", ' \n {"name": ["叶老桂"]} \n', E({("name", "叶老桂")}), True, False),
    ("second JSON value trails", '{"name": ["叶老桂"]}{"name": ["叶老桂"]}', E({("name", "叶老桂")}), True, True),
    ("prose trails", '[{"label": "name", "text": "叶老桂"}]\n好的', E({("name", "叶老桂")}), True, True),
    ("empty dict", "{}", E(), True, False),
    ("empty list", "[]", E(), True, False),
    ("raw CLUENER label form", '{"name": {"叶老桂": [[9, 11]]}}', E({("name", "叶老桂")}), True, False),
    ("single string value", '{"name": "叶老桂"}', E({("name", "叶老桂")}), True, False),
    ("duplicates collapse, texts stripped", '{"name": ["叶老桂", " 叶老桂 ", ""]}', E({("name", "叶老桂")}), True, False),
    ("malformed list items skipped", ('[{"label": "name"}, {"text": "x"}, "y", {"label": "name", "text": 3},'
                                      ' {"label": "name", "text": "叶老桂"}]'), E({("name", "叶老桂")}), True, False),
    ("type without entities names nothing", '{"name": [], "company": ["浙商银行"]}',
     E({("company", "浙商银行")}), True, False),
    ("not JSON", "叶老桂是人名", E(), False, False),
    ("truncated JSON", '{"name": ["叶老', E(), False, False),
    ("empty answer", "", E(), False, False),
    ("JSON string is not an answer", '"叶老桂"', E(), False, False),
    ("JSON number is not an answer", "42 and more", E(), False, False),
    ("code fence is not bare JSON", '```json\n{"name": ["叶老桂"]}\n```', E(), False, False),
]


@pytest.mark.parametrize("name,answer,entities,valid,trailing", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_entities(name, answer, entities, valid, trailing):
    parsed = parse_entities(answer)
    assert parsed.entities == entities
    assert parsed.valid_json is valid
    assert parsed.trailing_text is trailing


def test_types_are_the_types_with_entities():
    assert parse_entities('{"name": ["a", "b"], "game": [], "book": ["c"]}').types == {"name", "book"}


def test_prf_zero_denominators():
    assert prf(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert prf(1, 2, 4) == {"precision": 0.5, "recall": 0.25, "f1": pytest.approx(1 / 3, abs=1e-15)}


GOLDS = [
    '{"name": ["叶老桂"], "company": ["浙商银行"]}',
    '[{"label": "address", "text": "台湾"}, {"label": "name", "text": "彭小军"}]',
    "{}",
    "[]",
]
PREDS = [
    '{"name": ["叶老桂"]}\n{"name": ["叶老桂"]}',  # 1 of 2 found; trailing text
    '[{"label": "address", "text": "台湾"}, {"label": "name", "text": "彭军"}]',  # 1 hit, 1 wrong span
    "我不知道",  # invalid JSON
    "  []  ",  # exact match of an empty gold
]


def test_score_ner_hand_computed():
    m = score_ner(PREDS, GOLDS)
    # entities: tp = 1 + 1 = 2, predicted = 1 + 2 = 3, gold = 2 + 2 = 4
    # P = 2/3, R = 1/2, F1 = 2·(2/3)(1/2)/(2/3 + 1/2) = 4/7
    assert m["n"] == 4
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["recall"] == 0.5
    assert m["micro_f1"] == pytest.approx(4 / 7, abs=1e-12)
    # name: tp 1 (叶老桂), pred 2 (叶老桂, 彭军), gold 2 (叶老桂, 彭小军) → 1/2, 1/2, 1/2
    # company: pred 0, gold 1 → 0; address: 1 of 1 → 1
    assert m["per_type"] == {
        "address": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "company": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "name": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
    }
    assert m["macro_f1"] == pytest.approx((1.0 + 0.0 + 0.5) / 3, abs=1e-12)
    # types: record 1 names {name} of {name, company}; record 2 {address, name} of {address, name}
    # tp = 1 + 2 = 3, predicted = 3, gold = 4 → P = 1, R = 3/4, F1 = 6/7
    assert m["type_f1"] == pytest.approx(6 / 7, abs=1e-12)
    assert m["exact_match"] == 0.25  # record 4 only: an invalid answer never matches, even an empty gold
    assert m["invalid_json_rate"] == 0.25
    assert m["trailing_text_rate"] == 0.25


def test_score_ner_gold_echo_is_perfect():
    m = score_ner(GOLDS, GOLDS)
    assert (m["micro_f1"], m["macro_f1"], m["type_f1"], m["exact_match"]) == (1.0, 1.0, 1.0, 1.0)
    assert (m["invalid_json_rate"], m["trailing_text_rate"]) == (0.0, 0.0)


def test_score_ner_predicted_type_absent_from_gold_is_listed_but_not_macro_averaged():
    m = score_ner(['{"name": ["叶老桂"], "movie": ["x"]}'], ['{"name": ["叶老桂"]}'])
    assert m["per_type"]["movie"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == 1.0
    assert m["precision"] == 0.5


def test_score_ner_rejects_bad_gold_and_length_mismatch():
    with pytest.raises(ValueError, match="gold answer 0"):
        score_ner(["{}"], ["not json"])
    with pytest.raises(ValueError, match="1 predictions for 2"):
        score_ner(["{}"], ["{}", "{}"])


def test_score_ner_empty():
    m = score_ner([], [])
    assert m["n"] == 0 and m["micro_f1"] == 0.0 and m["exact_match"] == 0.0 and m["per_type"] == {}


def test_similarity_hand_computed():
    # jieba: 今天天气|很|好 vs 今天天气|不错 → ROUGE-1 P = 1/3, R = 1/2, F = 0.4; no common bigram; LCS = 1
    # BLEU over characters: 1-gram 4/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3, equal lengths (BP = 1)
    # → (4/6 · 3/5 · 2/4 · 1/3)^(1/4) = (1/15)^(1/4) = 0.508132748… → 50.8133
    assert similarity("今天天气很好", "今天天气不错") == {
        "bleu_4": 50.8133, "rouge_1": 40.0, "rouge_2": 0.0, "rouge_l": 40.0,
    }
    # no 4-gram match: method3 smooths the first zero count to 1/(2·1) → (3/4 · 2/3 · 1/2 · 1/2)^(1/4) = 0.5946…
    assert similarity("abce", "abcd")["bleu_4"] == 59.4604
    assert similarity("今天天气很好", "今天天气很好") == {
        "bleu_4": 100.0, "rouge_1": 100.0, "rouge_2": 100.0, "rouge_l": 100.0,
    }
    assert similarity("", "今天天气很好") == {"bleu_4": 0.0, "rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}


def test_score_generation_means():
    m = score_generation(["今天天气很好", "今天天气很好"], ["今天天气不错", "今天天气很好"])
    assert m == {
        "n": 2,
        "bleu_4": (50.8133 + 100.0) / 2,
        "rouge_1": 70.0,
        "rouge_2": 50.0,
        "rouge_l": 70.0,
        "mean_length": 6.0,
        "mean_reference_length": 6.0,
    }


def test_mean_length():
    assert mean_length(["ab", "叶老桂", ""]) == 5 / 3
    assert mean_length([]) == 0.0


def test_score_classification():
    m = score_classification([" 财经\n", "教育", "财经。"], ["财经", "财经", "财经"])
    assert m == {"n": 3, "accuracy": 1 / 3, "mean_length": (4 + 2 + 3) / 3}
