"""Scoring: strings in, numbers out. No I/O, no network, no LLaMA-Factory; exact unit tests in tests/eval/test_scoring.py.

* CLUENER (`parse_entities`, `score_ner`): the first JSON value of an answer, in either of the seeds' forms
  (dict `{"name": ["叶老桂"]}` or list `[{"label": "name", "text": "叶老桂"}]`), scored as sets of
  (type, text) pairs per record. Figures are fractions in [0, 1].
* Generation (`score_generation`): BLEU-4 and ROUGE-1/2/L exactly as LLaMA-Factory's
  `ComputeSimilarity` computes them (llamafactory/train/sft/metric.py): ROUGE F over jieba words with
  rouge-chinese, BLEU-4 over characters with nltk's `sentence_bleu` and `SmoothingFunction().method3`,
  each per sample ×100 and rounded to 4 places, then averaged. They keep LLaMA-Factory's percent scale
  (0–100) so they compare with its `predict_bleu-4` / `predict_rouge-*` figures.
* Classification (`score_classification`): accuracy of the stripped answer against the label.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Entity = tuple[str, str]  # (type, text)

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedAnswer:
    """One answer, parsed. `entities` is empty when the answer is not valid JSON."""

    entities: frozenset[Entity]
    valid_json: bool  # the answer starts (after whitespace) with a JSON object or array
    trailing_text: bool  # non-whitespace text follows that first JSON value

    @property
    def types(self) -> frozenset[str]:
        """The entity types the answer names (types with at least one entity)."""
        return frozenset(t for t, _ in self.entities)


def _entities_of(value: Any) -> frozenset[Entity]:
    """The (type, text) pairs of a decoded answer in dict or list form; malformed parts are skipped.

    Dict form values may be a list of texts, a single text, or CLUENER's raw `{text: spans}` mapping.
    Texts are stripped; empty texts and non-string texts are skipped.
    """
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        for label, texts in value.items():
            if isinstance(texts, str):
                texts = [texts]
            elif isinstance(texts, dict):
                texts = list(texts)
            elif not isinstance(texts, list):
                continue
            pairs.extend((label, t) for t in texts)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                pairs.append((item.get("label"), item.get("text")))
    return frozenset(
        (label, text.strip())
        for label, text in pairs
        if isinstance(label, str) and isinstance(text, str) and text.strip()
    )


def parse_entities(answer: str) -> ParsedAnswer:
    """Parse the first JSON value of `answer` (after leading whitespace) into a set of entities.

    Invalid: the answer does not start with a JSON value, or that value is neither an object nor an array.
    Trailing text: anything but whitespace after the first JSON value (the seeds' adapters kept generating).
    """
    text = answer.lstrip()
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        return ParsedAnswer(frozenset(), valid_json=False, trailing_text=False)
    if not isinstance(value, (dict, list)):
        return ParsedAnswer(frozenset(), valid_json=False, trailing_text=False)
    return ParsedAnswer(_entities_of(value), valid_json=True, trailing_text=bool(text[end:].strip()))


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; a zero denominator gives 0.0."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def score_ner(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, Any]:
    """Entity-level scores of answers against gold answers (both strings, paired by position).

    * `precision`, `recall`, `micro_f1`: over all (type, text) pairs, each record's pairs a set.
    * `per_type`: {type: {precision, recall, f1, support}} for every type in the gold or the answers;
      `support` is the number of gold entities of that type.
    * `macro_f1`: the mean F1 over the types present in the gold answers.
    * `type_f1`: micro F1 over each record's set of types named (answer) vs present (gold).
    * `exact_match`: share of records whose entity set equals the gold set (invalid JSON never matches).
    * `invalid_json_rate`, `trailing_text_rate`: shares of all records.

    Raises ValueError when a gold answer does not parse: the data, not the model, is wrong then.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    n = len(golds)
    tp = n_pred = n_gold = 0
    ttp = tn_pred = tn_gold = 0
    exact = invalid = trailing = 0
    counts: dict[str, list[int]] = {}  # type -> [tp, n_pred, n_gold]
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        g = parse_entities(gold)
        if not g.valid_json:
            raise ValueError(f"gold answer {i} is not a JSON object or array: {gold[:80]!r}")
        p = parse_entities(pred)
        invalid += not p.valid_json
        trailing += p.trailing_text
        exact += p.valid_json and p.entities == g.entities
        hits = p.entities & g.entities
        tp, n_pred, n_gold = tp + len(hits), n_pred + len(p.entities), n_gold + len(g.entities)
        ttp += len(p.types & g.types)
        tn_pred += len(p.types)
        tn_gold += len(g.types)
        for t, _ in p.entities:
            counts.setdefault(t, [0, 0, 0])[1] += 1
        for t, _ in g.entities:
            counts.setdefault(t, [0, 0, 0])[2] += 1
        for t, _ in hits:
            counts[t][0] += 1
    micro = prf(tp, n_pred, n_gold)
    per_type = {t: {**prf(*c), "support": c[2]} for t, c in sorted(counts.items())}
    gold_types = [t for t, c in counts.items() if c[2]]
    return {
        "n": n,
        "micro_f1": micro["f1"],
        "precision": micro["precision"],
        "recall": micro["recall"],
        "macro_f1": sum(per_type[t]["f1"] for t in gold_types) / len(gold_types) if gold_types else 0.0,
        "per_type": per_type,
        "type_f1": prf(ttp, tn_pred, tn_gold)["f1"],
        "exact_match": exact / n if n else 0.0,
        "invalid_json_rate": invalid / n if n else 0.0,
        "trailing_text_rate": trailing / n if n else 0.0,
    }


def similarity(prediction: str, reference: str) -> dict[str, float]:
    """One sample's ROUGE-1/2/L F and BLEU-4, ×100 and rounded to 4 places, as LLaMA-Factory computes them."""
    import jieba  # imported here: only generation tasks need jieba, nltk and rouge-chinese
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    _quiet_jieba(jieba)
    hypothesis = list(jieba.cut(prediction))
    ref = list(jieba.cut(reference))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(ref).split()) == 0:
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        scores = Rouge().get_scores(" ".join(hypothesis), " ".join(ref))[0]
        rouge = {k: v["f"] for k, v in scores.items()}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return {
        "bleu_4": float(round(bleu * 100, 4)),
        "rouge_1": round(rouge["rouge-1"] * 100, 4),
        "rouge_2": round(rouge["rouge-2"] * 100, 4),
        "rouge_l": round(rouge["rouge-l"] * 100, 4),
    }


def _quiet_jieba(jieba: Any) -> None:
    import logging

    jieba.setLogLevel(logging.WARNING)


def score_generation(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Mean BLEU-4 / ROUGE-1/2/L (percent, LLaMA-Factory's scale) and mean lengths in characters."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(references)
    totals = {"bleu_4": 0.0, "rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}
    for pred, ref in zip(predictions, references):
        for k, v in similarity(pred, ref).items():
            totals[k] += v
    return {
        "n": n,
        **{k: v / n if n else 0.0 for k, v in totals.items()},
        "mean_length": mean_length(predictions),
        "mean_reference_length": mean_length(references),
    }


def score_classification(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy: the answer, stripped of surrounding whitespace, equals the gold label (a fraction in [0, 1])."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    n = len(labels)
    hits = sum(p.strip() == g.strip() for p, g in zip(predictions, labels))
    return {"n": n, "accuracy": hits / n if n else 0.0, "mean_length": mean_length(predictions)}


def mean_length(texts: Iterable[str]) -> float:
    """Mean length in characters (0.0 for no texts)."""
    lengths = [len(t) for t in texts]
    return sum(lengths) / len(lengths) if lengths else 0.0
