"""pipelines.eval.grammars checked with xgrammar itself, the engine under vLLM's structured outputs.

Every grammar is parsed with `xgrammar.Grammar.from_ebnf` (what vLLM's request validation does; a grammar it
rejects would silently fall back to another backend), compiled, and run through a `GrammarMatcher` over the
answer's bytes: accepted means the whole string is consumed and the matcher has terminated.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import sys

import pytest

try:
    import xgrammar as xgr
except ImportError as e:  # fail, never skip: `make setup` installs xgrammar (requirements/no-deps.txt)
    raise ImportError("`xgrammar` is not installed: tests/eval/test_grammars.py checks the grammars with the engine "
                      "vLLM uses; run `make setup` (requirements/no-deps.txt).") from e

from realdata import real, shared

from pipelines.common.paths import RAW_DIR
from pipelines.data.converters import CLUENER_TYPES, cluener_entities, cluener_target
from pipelines.eval import grammars
from pipelines.eval.grammars import (
    accepts_ner,
    choice_structured_outputs,
    extra_body,
    ner_grammar,
    ner_structured_outputs,
)

_COMPILER = xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False)

#: The start of CLUENER train.json line 1.
TEXT = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。叶老桂认为，"
GOLD = {"dict": '{"company": ["浙商银行"], "name": ["叶老桂"], "position": ["博士"]}',
        "list": '[{"label": "company", "text": "浙商银行"}, {"label": "name", "text": "叶老桂"}, '
                '{"label": "position", "text": "博士"}]'}


def language(grammar: str):
    """The grammar compiled once, as a predicate on strings: does xgrammar accept the whole string?"""
    compiled = _COMPILER.compile_grammar(xgr.Grammar.from_ebnf(grammar))

    def accepts(answer: str) -> bool:
        matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return matcher.accept_string(answer) and matcher.is_terminated()

    return accepts


# ------------------------------------------------------------------------------------ the real CLUENER


@pytest.fixture(scope="module")
def cluener_rows() -> list[dict]:
    rows = {}
    for split, count in (("train", 10748), ("dev", 1343)):
        with shared("cluener2020", f"{split}.json").open(encoding="utf-8") as f:
            rows[split] = [json.loads(line) for line in f]
        assert len(rows[split]) == count
    return rows["train"] + rows["dev"]


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    """The bundled CLUENER sample (data/raw/cluener_sample): the bare-clone tier's share of the checks below."""
    rows = []
    for split in ("train", "dev"):
        with (RAW_DIR / "cluener_sample" / f"{split}.json").open(encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    assert len(rows) == 1200
    return rows


@real
@pytest.mark.parametrize("form", ["dict", "list"])
def test_every_real_cluener_gold_answer_is_accepted_by_its_own_grammar(cluener_rows, form):
    assert_gold_accepted(cluener_rows, form)


@pytest.mark.parametrize("form", ["dict", "list"])
def test_every_sample_gold_answer_is_accepted_by_its_own_grammar(sample_rows, form):
    assert_gold_accepted(sample_rows, form)


def assert_gold_accepted(rows: list[dict], form: str) -> None:
    refused_xgr, refused_py = [], []
    for i, row in enumerate(rows):
        answer = cluener_target(cluener_entities(row["text"], row["label"]), form)
        if not accepts_ner(answer, row["text"], CLUENER_TYPES, form):
            refused_py.append(i)
        if not language(ner_grammar(row["text"], CLUENER_TYPES, form))(answer):
            refused_xgr.append(i)
    assert (refused_xgr, refused_py) == ([], [])


@real
def test_a_gold_answer_is_refused_by_another_records_grammar(cluener_rows):
    first, second = cluener_rows[0], cluener_rows[1]
    answer = cluener_target(cluener_entities(first["text"], first["label"]))
    assert not language(ner_grammar(second["text"], CLUENER_TYPES))(answer)
    assert not accepts_ner(answer, second["text"], CLUENER_TYPES)


# ------------------------------------------------------------------------ what is accepted and refused

ACCEPTED = [
    ("gold", "dict", GOLD["dict"]),
    ("gold", "list", GOLD["list"]),
    ("nothing", "dict", "{}"),
    ("nothing", "list", "[]"),
    ("the whole text", "dict", json.dumps({"scene": [TEXT]}, ensure_ascii=False)),
    ("one character", "dict", '{"address": ["，"]}'),
    ("first and last type", "dict", '{"address": ["浙"], "scene": ["门槛"]}'),
    ("several entities", "dict", '{"name": ["叶老桂", "博士", "叶老桂"]}'),
    ("list in any order, repeats", "list", ('[{"label": "name", "text": "叶老桂"}, '
                                            '{"label": "company", "text": "浙商银行"}, '
                                            '{"label": "name", "text": "叶老桂"}]')),
]

REFUSED = [
    ("entity not in the text", "dict", '{"name": ["王小明"]}'),
    ("entity runs past the text", "dict", '{"name": ["叶老桂认为，吗"]}'),
    ("entity not contiguous", "dict", '{"company": ["浙商行"]}'),
    ("label outside the types", "dict", '{"person": ["叶老桂"]}'),
    ("label outside the types", "list", '[{"label": "person", "text": "叶老桂"}]'),
    ("repeated key", "dict", '{"name": ["叶老桂"], "name": ["博士"]}'),
    ("keys out of schema order", "dict", '{"name": ["叶老桂"], "company": ["浙商银行"]}'),
    ("empty entity", "dict", '{"name": [""]}'),
    ("empty entity", "list", '[{"label": "name", "text": ""}]'),
    ("empty list", "dict", '{"name": []}'),
    ("a string, not a list", "dict", '{"name": "叶老桂"}'),
    ("unclosed", "dict", '{"name": ["叶老桂"]'),
    ("extra bracket", "dict", '{"name": ["叶老桂"]]}'),
    ("single quotes", "dict", "{'name': ['叶老桂']}"),
    ("trailing comma", "list", '[{"label": "name", "text": "叶老桂"},]'),
    ("trailing newline", "dict", '{"name": ["叶老桂"]}\n'),
    ("trailing text", "dict", '{"name": ["叶老桂"]} 以上'),
    ("two answers", "list", "[][]"),
    ("leading space", "dict", " {}"),
    ("compact separators", "dict", '{"name":["叶老桂"]}'),
    ("space inside brackets", "dict", '{"name": [ "叶老桂" ]}'),
    ("indented", "dict", json.dumps({"name": ["叶老桂"]}, ensure_ascii=False, indent=2)),
    ("space in an empty object", "dict", "{ }"),
    ("ASCII escapes", "dict", json.dumps({"name": ["叶老桂"]})),
    ("keys swapped", "list", '[{"text": "叶老桂", "label": "name"}]'),
    ("missing text", "list", '[{"label": "name"}]'),
    ("extra key", "list", '[{"label": "name", "text": "叶老桂", "start": 9}]'),
    ("list form for dict", "dict", "[]"),
    ("dict form for list", "list", "{}"),
    ("empty answer", "dict", ""),
    ("null", "dict", "null"),
    ("nested past the recursion limit", "list", "[" * 100_000),
]


@pytest.mark.parametrize("name, form, answer", ACCEPTED, ids=[f"{r[0]}-{r[1]}" for r in ACCEPTED])
def test_accepted(name, form, answer):
    assert language(ner_grammar(TEXT, CLUENER_TYPES, form))(answer)
    assert accepts_ner(answer, TEXT, CLUENER_TYPES, form)


@pytest.mark.parametrize("name, form, answer", REFUSED, ids=[f"{r[0]}-{r[1]}" for r in REFUSED])
def test_refused(name, form, answer):
    assert not language(ner_grammar(TEXT, CLUENER_TYPES, form))(answer)
    assert not accepts_ner(answer, TEXT, CLUENER_TYPES, form)


def test_dict_keys_any_subset_in_schema_order_and_no_other_order():
    accepts = language(ner_grammar(TEXT, CLUENER_TYPES))
    for size in range(1, len(CLUENER_TYPES) + 1):
        for keys in itertools.combinations(CLUENER_TYPES, size):
            answer = json.dumps({k: ["叶老桂"] for k in keys}, ensure_ascii=False)
            assert accepts(answer), answer
            if size > 1:
                swapped = json.dumps({k: ["叶老桂"] for k in (keys[1], keys[0], *keys[2:])}, ensure_ascii=False)
                assert not accepts(swapped), swapped


@pytest.mark.parametrize("text, labels", [("", CLUENER_TYPES), (TEXT, [])])
@pytest.mark.parametrize("form, empty", [("dict", "{}"), ("list", "[]")])
def test_with_no_text_or_no_labels_only_the_empty_answer(text, labels, form, empty):
    accepts = language(ner_grammar(text, labels, form))
    assert accepts(empty) and accepts_ner(empty, text, labels, form)
    other = GOLD[form] if text else ('{"name": ["a"]}' if form == "dict" else '[{"label": "name", "text": "a"}]')
    assert not accepts(other) and not accepts_ner(other, text, labels, form)


# ---------------------------------------------------------------------------------------------- escaping

ODD = 'a"b\\c\nd\te\x01f😀g\x1fh\x7fi\u2028j\x00k\x85l#|(*)?[]{}'


@pytest.mark.parametrize("form", ["dict", "list"])
def test_every_substring_is_accepted_exactly_as_json_dumps_writes_it(form):
    accepts = language(ner_grammar(ODD, ["name"], form))
    for i in range(len(ODD)):
        for j in range(i + 1, len(ODD) + 1):
            value = {"name": [ODD[i:j]]} if form == "dict" else [{"label": "name", "text": ODD[i:j]}]
            answer = json.dumps(value, ensure_ascii=False)
            assert accepts(answer), answer
            assert accepts_ner(answer, ODD, ["name"], form), answer


@pytest.mark.parametrize("entity", [
    '\\u0022',  # `"` as a unicode escape
    '"',  # unescaped quote
    '\\\\\\\\',  # two backslashes where the text has one
    '\n',  # raw newline
    '\\u000a',  # newline as a unicode escape
    '\t',  # raw tab
    '\x01',  # raw control character
    '\\u0001'.upper(),  # upper-case escape
    '\\u001F',  # upper-case hex digits
    '\\ud83d\\ude00',  # the emoji as a surrogate pair
    '\\u007f',  # DEL escaped (json.dumps keeps it literal)
    '\\/',  # escaped slash
    '\\x01',  # not a JSON escape
])
def test_other_spellings_of_odd_characters_are_refused(entity):
    answer = '{"name": ["' + entity + '"]}'
    assert not language(ner_grammar(ODD, ["name"]))(answer), answer
    assert not accepts_ner(answer, ODD, ["name"]), answer


def test_labels_are_escaped_too():
    labels = ['a"b', "c\\d", "类型"]
    answer = json.dumps({"c\\d": ["x"], "类型": ["xy"]}, ensure_ascii=False)
    for form, ans in (("dict", answer), ("list", json.dumps([{"label": 'a"b', "text": "x"}], ensure_ascii=False))):
        assert language(ner_grammar("xyz", labels, form))(ans), ans
        assert accepts_ner(ans, "xyz", labels, form)


# -------------------------------------------------------------------------------------------------- size


def test_grammar_size_grows_linearly_with_the_text():
    text = (TEXT * 30)[:1000]
    short, long = ner_grammar(text[:100], CLUENER_TYPES), ner_grammar(text, CLUENER_TYPES)
    assert len(long.splitlines()) - len(short.splitlines()) <= 2 * 900  # at most one rule per automaton state
    assert len(long) < 1.5 * 10 * len(short)  # ~10x for 10x the text; all substrings would be ~100x
    span = text[17:960]
    assert language(long)(json.dumps({"scene": [span]}, ensure_ascii=False))
    assert not language(long)(json.dumps({"scene": [span + "x"]}, ensure_ascii=False))


def test_a_repetitive_text_costs_the_matcher_no_more_than_another():
    """The span grammar is the text's suffix automaton: one live path, however often the text repeats. The per-start
    chain it replaced took 36 s for a 64-character entity of a 2,000-character one-character text, and over 200 s
    for 4,800 characters of 5,000 (issue 24; `python -m pipelines.bench.grammar_cost`, docs/RELIABILITY.md)."""
    import time

    for text in ("叶" * 2000, ("浙商银行" * 600)[:2000]):
        accepts = language(ner_grammar(text, CLUENER_TYPES))
        entity = text[:500]
        t0 = time.perf_counter()
        assert accepts(json.dumps({"name": [entity]}, ensure_ascii=False))
        assert time.perf_counter() - t0 < 3.0  # about 0.05 s here
        assert not accepts(json.dumps({"name": [text + "叶"]}, ensure_ascii=False))


@pytest.mark.parametrize("text", ["abab", "aaaa", "abcabd", "叶老桂叶老", TEXT[:30]])
def test_the_suffix_automaton_spells_exactly_the_substrings(text):
    nxt = grammars.suffix_automaton(text)
    spelled, todo = set(), [(0, "")]
    while todo:
        state, word = todo.pop()
        for ch, to in nxt[state].items():
            spelled.add(word + ch)
            todo.append((to, word + ch))
    assert spelled == {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    assert len(nxt) <= max(2 * len(text) - 1, 1)


# ---------------------------------------------------------------------------- the checker agrees with xgrammar


def _mutations(answer: str, text: str) -> set[str]:
    """The answer with each character deleted, and with a space, a quote or a text character inserted."""
    out = {answer[:i] + answer[i + 1:] for i in range(len(answer))}
    for i in range(len(answer) + 1):
        for ch in (" ", '"', ",", text[i % len(text)]):
            out.add(answer[:i] + ch + answer[i:])
    return out


@real
@pytest.mark.parametrize("form", ["dict", "list"])
def test_accepts_ner_agrees_with_xgrammar(cluener_rows, form):
    assert_checker_agrees(cluener_rows[-150:], form)  # the last dev rows


@pytest.mark.parametrize("form", ["dict", "list"])
def test_accepts_ner_agrees_with_xgrammar_on_the_sample(sample_rows, form):
    assert_checker_agrees(sample_rows[-60:], form)


def assert_checker_agrees(rows: list[dict], form: str) -> None:
    checked = accepted = 0
    for row in rows:
        text = row["text"]
        accepts = language(ner_grammar(text, CLUENER_TYPES, form))
        gold = cluener_target(cluener_entities(text, row["label"]), form)
        for answer in _mutations(gold, text) | {gold}:
            expected = accepts(answer)
            assert accepts_ner(answer, text, CLUENER_TYPES, form) == expected, (text, answer, expected)
            checked += 1
            accepted += expected
    assert accepted > len(rows) and checked - accepted > 100 * len(rows)  # both outcomes well represented
    for _, f, answer in ACCEPTED + REFUSED:
        if f == form:
            assert accepts_ner(answer, TEXT, CLUENER_TYPES, form) == language(
                ner_grammar(TEXT, CLUENER_TYPES, form))(answer), answer


# ------------------------------------------------------------------------------------ request fields


def _xgr_prefix(grammar: str):
    compiled = _COMPILER.compile_grammar(xgr.Grammar.from_ebnf(grammar))

    def begins(answer: str) -> bool:
        return xgr.GrammarMatcher(compiled, terminate_without_stop_token=True).accept_string(answer)

    return begins


@pytest.mark.parametrize("form", grammars.NER_FORMS)
def test_accepts_ner_prefix_agrees_with_xgrammar_on_every_cut(form):
    """What the evaluator checks a cut answer (`finish_reason: length`) with: every prefix of an answer that
    xgrammar's matcher accepts, and no other (issue 24, item 6)."""
    text = TEXT + '"\\\n'
    begins = _xgr_prefix(ner_grammar(text, CLUENER_TYPES, form))
    answers = [GOLD[form], "{}" if form == "dict" else "[]",
               GOLD[form].replace("叶老桂", "张三"), GOLD[form].replace("叶老桂", '"\\\n'),
               GOLD[form].replace("叶老桂", json.dumps('"\\\n')[1:-1]), GOLD[form] + " ", GOLD[form][:-1] + ", "]
    checked = 0
    for answer in answers:
        for k in range(len(answer) + 1):
            cut = answer[:k]
            assert grammars.accepts_ner_prefix(cut, text, CLUENER_TYPES, form) == begins(cut), cut
            checked += 1
    assert checked > 300


def test_request_fields():
    grammar = ner_grammar(TEXT, CLUENER_TYPES, "list")
    assert ner_structured_outputs(TEXT, CLUENER_TYPES, "list") == {"grammar": grammar}
    assert extra_body({"grammar": grammar}) == {"structured_outputs": {"grammar": grammar}}
    assert choice_structured_outputs(("体育", "财经")) == {"choice": ["体育", "财经"]}
    assert extra_body({"choice": ["体育"]}) == {"structured_outputs": {"choice": ["体育"]}}
    assert extra_body(None) == {}


@pytest.mark.parametrize("form", ["dict", "list"])
def test_grammar_is_printable_xgrammar_ebnf_with_a_root_rule(form):
    grammar = ner_grammar(ODD, CLUENER_TYPES, form)
    assert grammar.startswith("root ::= ") and grammar.endswith("\n")
    assert all(line.isprintable() and " ::= " in line for line in grammar.splitlines())  # non-printables escaped
    xgr.Grammar.from_ebnf(grammar, root_rule_name="root")  # what vLLM's validation calls; raises if invalid


@pytest.mark.parametrize("call, message", [
    (lambda: ner_grammar(TEXT, CLUENER_TYPES, "table"), "unknown NER answer form `table`"),
    (lambda: ner_grammar(TEXT, ["name", "name"]), "`labels` must be distinct non-empty strings"),
    (lambda: ner_grammar(TEXT, ["name", ""]), "`labels` must be distinct non-empty strings"),
    (lambda: ner_grammar("a\ud800b", ["name"]), "unpaired surrogate"),
    (lambda: accepts_ner("{}", TEXT, CLUENER_TYPES, "table"), "unknown NER answer form `table`"),
    (lambda: choice_structured_outputs([]), "`choices` must be a non-empty list"),
    (lambda: choice_structured_outputs(["体育", ""]), "`choices` must be a non-empty list"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_module_imports_only_the_standard_library():
    tree = ast.parse(inspect.getsource(grammars))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))  # no relative
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
