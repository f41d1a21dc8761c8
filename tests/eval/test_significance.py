"""Significance: the statistics reproduce the scorer's figures exactly, and the bootstrap and the randomization
test behave as their definitions say (checked against slow plain-Python references fed the same random draws)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipelines.data.converters import CLUENER_TYPES
from pipelines.eval import evaluate, scoring
from pipelines.eval import significance as sig
from pipelines.eval.tasks import TASKS

TEXTS = ("叶老桂", "浙商银行", "台湾", "彭小军", "北京", "中国银行", "魔兽世界", "红楼梦", "国务院", "曼联", "CEO")


def _gold(rnd: random.Random) -> str:
    """A gold answer as `make data` writes them: types in schema order, dict or list form."""
    found = sorted({(rnd.choice(CLUENER_TYPES), rnd.choice(TEXTS)) for _ in range(rnd.randint(0, 4))},
                   key=lambda e: CLUENER_TYPES.index(e[0]))
    if rnd.random() < 0.5:
        d: dict[str, list[str]] = {}
        for t, x in found:
            d.setdefault(t, []).append(x)
        return json.dumps(d, ensure_ascii=False)
    return json.dumps([{"label": t, "text": x} for t, x in found], ensure_ascii=False)


def _answer(rnd: random.Random, gold: str, skill: float) -> str:
    """A model's answer: the gold with entities dropped, wrong ones and unknown types added, broken JSON,
    trailing text, whitespace and duplicates, in either form."""
    roll = rnd.random()
    if roll < 0.06:
        return rnd.choice(["我不知道", '{"name": ["叶老', "", '"叶老桂"', '```json\n{"name": ["叶老桂"]}\n```'])
    kept = [(t, x) for t, x in scoring.parse_entities(gold).entities if rnd.random() < skill]
    for _ in range(rnd.choice([0, 0, 1, 2])):
        kept.append((rnd.choice((*CLUENER_TYPES, "person")), rnd.choice(TEXTS)))
    if kept and rnd.random() < 0.1:
        kept.append((kept[0][0], f" {kept[0][1]} "))  # the same entity again, padded: collapses
    if rnd.random() < 0.5:
        d: dict[str, list[str]] = {}
        for t, x in kept:
            d.setdefault(t, []).append(x)
        text = json.dumps(d, ensure_ascii=False)
    else:
        text = json.dumps([{"label": t, "text": x} for t, x in kept], ensure_ascii=False)
    if rnd.random() < 0.1:
        text += rnd.choice(["\n好的", '{"name": []}'])
    return rnd.choice(["", " ", "\n"]) + text


def _ner_data(seed: int, n: int, skills: tuple[float, ...] = (0.8,)) -> tuple[list[str], list[list[str]]]:
    rnd = random.Random(seed)
    golds = [_gold(rnd) for _ in range(n)]
    return golds, [[_answer(rnd, g, s) for g in golds] for s in skills]


def _finish(rnd: random.Random, n: int) -> list[str | None]:
    return [rnd.choice(["stop", "stop", "stop", "length", None]) for _ in range(n)]


def _assert_reproduces(kind: str, task: str, stats: dict, reference: dict) -> None:
    """Every metric of the task's report that the scorer returns comes out of the statistics, bit for bit."""
    full = sig.metrics_from_stats(kind, json.loads(json.dumps(stats)))
    rows = [m for m in TASKS[task].rows if m in reference]
    assert set(TASKS[task].rows) <= set(sig.METRICS[kind])
    assert len(rows) >= len(TASKS[task].rows) - 1
    for m in rows:
        assert full[m] == reference[m], m


# ---------------------------------------------------------------- the statistics reproduce the scorer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ner_statistics_reproduce_the_scorer(seed):
    golds, (answers,) = _ner_data(seed, 300)
    finish = _finish(random.Random(seed), len(golds))
    stats = sig.record_stats("ner", answers, golds, labels=CLUENER_TYPES, truncated=[r == "length" for r in finish])
    reference = evaluate.score("ner", answers, golds, finish)
    _assert_reproduces("ner", "cluener", stats, reference)
    assert sig.metrics_from_stats("ner", stats)["valid_json_rate"] == 1 - reference["invalid_json_rate"]
    assert reference["macro_f1"] > 0 and reference["invalid_json_rate"] > 0 and reference["trailing_text_rate"] > 0


def test_ner_statistics_layout_and_macro_over_gold_types_only():
    answers = ['{"name": ["叶老桂"]}', '{"movie": ["x"]}\n好的', "oops"]
    golds = ['{"name": ["叶老桂"]}', "{}", '[{"label": "book", "text": "红楼梦"}]']
    stats = sig.record_stats("ner", answers, golds, labels=("game", "name"))
    assert stats == {
        "version": 1, "kind": "ner", "n": 3, "types": ["name", "movie", "book", "game"],
        "tp": [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], "fp": [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
        "fn": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], "invalid_json": [0, 0, 1], "trailing_text": [0, 1, 0],
        "length": [len(a) for a in answers], "truncated": None,
    }
    full = sig.metrics_from_stats("ner", stats)
    assert full["macro_f1"] == 0.5  # name 1.0, book 0.0; movie (answers only) and game (no one) left out
    assert "truncated_rate" not in full


def test_generation_statistics_reproduce_the_scorer(monkeypatch):
    rnd = random.Random(5)
    table: dict[tuple[str, str], dict[str, float]] = {}

    def similarity(prediction: str, reference: str) -> dict[str, float]:  # nltk and jieba take seconds to import
        return table.setdefault((prediction, reference), {k: round(rnd.uniform(0, 100), 4) for k in sig.SIMILARITY_KEYS})

    monkeypatch.setattr(scoring, "similarity", similarity)
    refs = ["".join(rnd.choices("今天天气很好不错", k=rnd.randint(1, 30))) for _ in range(257)]
    answers = ["".join(rnd.choices("今天天气很好不错", k=rnd.randint(0, 30))) for _ in refs]
    finish = _finish(rnd, len(refs))
    stats = sig.record_stats("generation", answers, refs, truncated=[r == "length" for r in finish])
    _assert_reproduces("generation", "ruozhiba", stats, evaluate.score("generation", answers, refs, finish))


def test_classification_statistics_reproduce_the_scorer():
    rnd = random.Random(3)
    labels = [rnd.choice(["财经", "教育", "体育"]) for _ in range(301)]
    answers = [rnd.choice([g, f" {g}\n", "财经", "教育。"]) for g in labels]
    finish = _finish(rnd, len(labels))
    stats = sig.record_stats("classification", answers, labels, truncated=[r == "length" for r in finish])
    _assert_reproduces("classification", "classification", stats,
                       evaluate.score("classification", answers, labels, finish))


def test_empty_statistics_give_the_scorers_zeros():
    full = sig.metrics_from_stats("ner", sig.record_stats("ner", [], [], labels=CLUENER_TYPES, truncated=[]))
    assert full["micro_f1"] == full["exact_match"] == full["macro_f1"] == full["truncated_rate"] == 0.0


def test_the_identity_index_gives_the_full_sample():
    golds, (answers,) = _ner_data(7, 120)
    stats = sig.record_stats("ner", answers, golds)
    full = sig.metrics_from_stats("ner", stats)
    once = sig.metrics_from_stats("ner", stats, np.arange(120))
    assert {m: v.shape for m, v in once.items()} == {m: (1,) for m in full}
    assert all(once[m][0] == pytest.approx(full[m], abs=1e-12) for m in full)


# ---------------------------------------------------------------- slow references fed the same draws


def _slow_micro_f1(stats: dict, rows: list[int]) -> float:
    tp = sum(sum(stats["tp"][i]) for i in rows)
    return scoring.prf(tp, tp + sum(sum(stats["fp"][i]) for i in rows), tp + sum(sum(stats["fn"][i]) for i in rows))["f1"]


def _slow_macro_f1(stats: dict, rows: list[int]) -> float:
    f1 = []
    for j in range(len(stats["types"])):
        tp, fp, fn = (sum(stats[k][i][j] for i in rows) for k in ("tp", "fp", "fn"))
        if tp + fn:
            f1.append(scoring.prf(tp, tp + fp, tp + fn)["f1"])
    return sum(f1) / len(f1) if f1 else 0.0


def test_bootstrap_matches_a_slow_loop_reference_on_the_same_indices():
    golds, (answers,) = _ner_data(11, 150)
    stats = sig.record_stats("ner", answers, golds)
    index = np.random.default_rng(4).integers(0, 150, size=(300, 150))  # the draw bootstrap_intervals makes
    fast = sig.metrics_from_stats("ner", stats, index, ["micro_f1", "macro_f1"])
    for metric, slow_metric in (("micro_f1", _slow_micro_f1), ("macro_f1", _slow_macro_f1)):
        slow = [slow_metric(stats, list(row)) for row in index]
        assert fast[metric] == pytest.approx(slow, abs=1e-12)
        low, high = np.quantile(slow, [0.05, 0.95])
        interval = sig.bootstrap_intervals("ner", stats, [metric], level=0.9, resamples=300, seed=4)[metric]
        assert interval == {"low": pytest.approx(low, abs=1e-12), "high": pytest.approx(high, abs=1e-12)}


def test_compare_matches_a_slow_loop_reference_on_the_same_draws():
    rnd = random.Random(8)
    labels = [rnd.choice("ab") for _ in range(80)]
    a = sig.record_stats("classification", [g if rnd.random() < 0.8 else "x" for g in labels], labels)
    b = sig.record_stats("classification", [g if rnd.random() < 0.6 else "x" for g in labels], labels)
    (row,) = sig.compare("classification", a, b, ["accuracy"], level=0.9, resamples=200, permutations=300, seed=9)
    rng = np.random.default_rng(9)
    index, swap = rng.integers(0, 80, size=(200, 80)), rng.random((300, 80)) < 0.5
    ca, cb = a["correct"], b["correct"]
    diffs = [sum(ca[i] - cb[i] for i in rows) / 80 for rows in index]
    observed = (sum(ca) - sum(cb)) / 80
    perm = [sum((cb[i] - ca[i]) if s[i] else (ca[i] - cb[i]) for i in range(80)) / 80 for s in swap]
    hits = sum(abs(d) >= abs(observed) - 1e-12 for d in perm)
    low, high = np.quantile(diffs, [0.05, 0.95])
    assert row == {"metric": "accuracy", "diff": observed, "low": pytest.approx(low, abs=1e-12),
                   "high": pytest.approx(high, abs=1e-12), "p_value": (hits + 1) / 301, "method": sig.COMPARE_METHOD,
                   "resamples": 200, "permutations": 300}
    assert 0 < row["p_value"] < 1


# ---------------------------------------------------------------- behaviour


def _synthetic_generation(rnd: random.Random, n: int) -> dict:
    return {"version": 1, "kind": "generation", "n": n,
            **{k: [round(rnd.uniform(0, 100), 4) for _ in range(n)] for k in sig.SIMILARITY_KEYS},
            "length": [rnd.randint(0, 50) for _ in range(n)], "reference_length": [rnd.randint(1, 50) for _ in range(n)],
            "truncated": [int(rnd.random() < 0.1) for _ in range(n)]}


def test_identical_answers_give_no_difference():
    golds, (answers,) = _ner_data(2, 200)
    rnd = random.Random(2)
    labels = [rnd.choice("ab") for _ in range(200)]
    cases = [("ner", sig.record_stats("ner", answers, golds, labels=CLUENER_TYPES, truncated=[False] * 200)),
             ("classification", sig.record_stats("classification", labels, labels)),
             ("generation", _synthetic_generation(rnd, 200))]
    for kind, stats in cases:
        rows = sig.compare(kind, stats, json.loads(json.dumps(stats)), resamples=200, permutations=200)
        assert [r["metric"] for r in rows] == [m for m in sig.METRICS[kind] if kind != "classification"
                                              or m != "truncated_rate"]
        for r in rows:
            assert (r["diff"], r["low"], r["high"], r["p_value"]) == (0.0, 0.0, 0.0, 1.0), (kind, r)


def test_a_clear_difference_gets_the_smallest_p_value():
    labels = ["a"] * 100 + ["b"] * 100
    a = sig.record_stats("classification", labels, labels)
    b = sig.record_stats("classification", ["c"] * 200, labels)
    (row,) = sig.compare("classification", a, b, ["accuracy"], permutations=999)
    assert (row["diff"], row["low"], row["high"], row["p_value"]) == (1.0, 1.0, 1.0, 1 / 1000)
    golds, _ = _ner_data(6, 200)
    golds = [g for g in golds if scoring.parse_entities(g).entities]
    perfect, empty = sig.record_stats("ner", golds, golds), sig.record_stats("ner", ["{}"] * len(golds), golds)
    rows = {r["metric"]: r for r in sig.compare("ner", perfect, empty, ["micro_f1", "macro_f1", "exact_match"])}
    assert all(r["diff"] == 1.0 and r["p_value"] == 1 / 1001 for r in rows.values())
    back = {r["metric"]: r for r in sig.compare("ner", empty, perfect, ["micro_f1"])}
    assert back["micro_f1"]["diff"] == -1.0 and back["micro_f1"]["high"] == -1.0


def test_the_interval_covers_a_known_accuracy():
    covered = 0
    for k in range(200):
        correct = (np.random.default_rng(1000 + k).random(200) < 0.7).astype(int).tolist()
        stats = {"version": 1, "kind": "classification", "n": 200, "correct": correct, "length": [1] * 200,
                 "truncated": None}
        interval = sig.bootstrap_intervals("classification", stats, ["accuracy"], seed=k)["accuracy"]
        covered += interval["low"] <= 0.7 <= interval["high"]
    assert covered >= 186  # 93% of 200


def test_a_fixed_seed_reproduces_every_figure():
    golds, (a, b) = _ner_data(9, 150, skills=(0.8, 0.7))
    sa, sb = sig.record_stats("ner", a, golds), sig.record_stats("ner", b, golds)
    first = sig.compare("ner", sa, sb)
    sig._bootstrap_draw.cache_clear()
    sig._swap_draw.cache_clear()
    assert sig.compare("ner", sa, sb) == first == sig.compare("ner", sa, sb)  # drawn afresh, then kept
    assert sig.bootstrap_intervals("ner", sa) == sig.bootstrap_intervals("ner", sa, seed=sig.DEFAULT_SEED)
    assert sig.bootstrap_intervals("ner", sa, seed=1) != sig.bootstrap_intervals("ner", sa)
    assert sig.compare("ner", sa, sb, seed=1) != sig.compare("ner", sa, sb)


def test_compare_aligns_entity_types_the_models_name_differently():
    golds, (a, b) = _ner_data(4, 100, skills=(0.9, 0.5))
    a = [x.replace('"person"', '"villain"') for x in a]  # a type only model a names
    sa, sb = sig.record_stats("ner", a, golds), sig.record_stats("ner", b, golds, labels=CLUENER_TYPES)
    assert "villain" in sa["types"] and "villain" not in sb["types"]
    ra, rb = scoring.score_ner(a, golds), scoring.score_ner(b, golds)
    for r in sig.compare("ner", sa, sb, ["micro_f1", "macro_f1", "precision"], resamples=100, permutations=100):
        assert r["diff"] == ra[r["metric"]] - rb[r["metric"]]
        assert r["low"] <= r["diff"] <= r["high"]


def test_mean_reference_length_never_differs():
    rnd = random.Random(1)
    a, b = _synthetic_generation(rnd, 60), _synthetic_generation(rnd, 60)
    b["reference_length"] = a["reference_length"]
    (row,) = sig.compare("generation", a, b, ["mean_reference_length"], resamples=50, permutations=50)
    assert (row["diff"], row["low"], row["high"], row["p_value"]) == (0.0, 0.0, 0.0, 1.0)


# ---------------------------------------------------------------- errors


def _cls(n: int, truncated: bool = True) -> dict:
    return sig.record_stats("classification", ["a"] * n, ["a"] * n, truncated=[False] * n if truncated else None)


@pytest.mark.parametrize("call,match", [
    (lambda: sig.compare("classification", _cls(3), _cls(4)), "3 records and model b 4"),
    (lambda: sig.record_stats("ner", ["{}"], ["{}", "{}"]), "1 predictions for 2"),
    (lambda: sig.record_stats("ner", ["{}"], ["not json"]), "gold answer 0"),
    (lambda: sig.record_stats("summary", ["a"], ["a"]), "unknown kind `summary`"),
    (lambda: sig.metrics_from_stats("summary", _cls(2)), "unknown kind"),
    (lambda: sig.metrics_from_stats("ner", _cls(2)), "of kind `classification`, not `ner`"),
    (lambda: sig.bootstrap_intervals("classification", _cls(5), level=1.0), "strictly between 0 and 1"),
    (lambda: sig.bootstrap_intervals("classification", _cls(5), level=0.0), "strictly between 0 and 1"),
    (lambda: sig.compare("classification", _cls(5), _cls(5), level=1.5), "strictly between 0 and 1"),
    (lambda: sig.bootstrap_intervals("classification", _cls(5), resamples=0), "resamples must be a positive"),
    (lambda: sig.compare("classification", _cls(5), _cls(5), resamples=0), "resamples must be a positive"),
    (lambda: sig.compare("classification", _cls(5), _cls(5), permutations=0), "permutations must be a positive"),
    (lambda: sig.bootstrap_intervals("classification", _cls(0)), "no records"),
    (lambda: sig.metrics_from_stats("classification", _cls(5), metrics=["bleu_4"]), "unknown classification metric"),
    (lambda: sig.compare("classification", _cls(5), _cls(5, truncated=False), ["truncated_rate"]), "truncation flags"),
    (lambda: sig.metrics_from_stats("classification", _cls(5), np.array([[0, 5]])), "outside 0..4"),
    (lambda: sig.metrics_from_stats("classification", {**_cls(5), "correct": [1, 0]}), "`correct` field"),
    (lambda: sig.compare("ner", sig.record_stats("ner", ["{}"], ['{"name": ["x"]}']),
                         sig.record_stats("ner", ["{}"], ['{"book": ["x"]}'])), "same gold answers"),
    (lambda: sig.record_stats("classification", ["a"], ["a"], truncated=[True, False]), "2 truncation flags"),
])
def test_errors_are_one_sentence_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
