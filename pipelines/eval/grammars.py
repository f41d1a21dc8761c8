r"""Server-side output constraints for vLLM's structured outputs, built per request. Standard library only.

vLLM takes a per-request constraint in the `structured_outputs` field of the request body (through the
`openai` client: `extra_body={"structured_outputs": {...}}`) and enforces it with xgrammar while decoding:

* classification: `choice_structured_outputs(categories)` → `{"choice": [...]}`, one of the candidates;
* CLUENER NER: `ner_structured_outputs(text, labels, form)` → `{"grammar": EBNF}`, an xgrammar EBNF grammar
  (root rule `root`) built from the input text, that admits exactly the answers the CLUENER converter writes
  (`json.dumps(..., ensure_ascii=False)`), with only spans of the text as entities (Geng et al. 2023,
  "Grammar-Constrained Decoding for Structured NLP Tasks").

The grammar, for `text` = c_0 … c_{n-1} and labels l_0 … l_{k-1}::

    root    ::= "{}" | "{" first_0 "}"                     # dict form
    first_i ::= pair_i rest_{i+1} | first_{i+1}            # the first label present, then later ones
    rest_i  ::= (", " pair_i)? rest_{i+1}                  # each label at most once, in label order
    pair_i  ::= "\"l_i\": [" entity (", " entity)* "]"     # a non-empty list

    root    ::= "[]" | "[" item (", " item)* "]"           # list form
    item    ::= "{\"label\": " label ", \"text\": " entity "}"
    label   ::= "\"l_0\"" | … | "\"l_{k-1}\""

    entity  ::= "\"" q_0 "\""                              # any non-empty substring of the text
    q_0     ::= c q_x | c' q_y | …                         # the text's suffix automaton: one rule per state,
    q_j     ::= (c q_x | c' q_y | …)?                      # one alternative per transition; stop anywhere

c_i is character i as `json.dumps` writes it inside a string (`\"`, `\\`, `\n`, `\u0001`; every other
character, emoji included, as itself), then written as an EBNF string literal: `"` and `\` backslashed and
non-printable characters as `\uXXXX` (xgrammar's lexer refuses a raw newline or NUL inside a literal).

Why the suffix automaton (Blumer et al. 1985): it is the smallest deterministic automaton of the substrings,
at most 2n - 1 states and 3n - 4 transitions, so the grammar stays linear in the text (listing the n(n+1)/2
substrings would make it quadratic), and deterministic: after any prefix of an entity one state is live. The
grammar it replaced (one rule per start, `s_i ::= c_i s_{i+1}?`) was linear too but left the matcher every start
where the entity's prefix occurs: on a repetitive text it carried thousands of paths, and accepting a
4,800-character entity of a 5,000-character repeating text took over 200 s (docs/RELIABILITY.md, "grammar cost").
What remains grows with the entity's length, not the text's repetition: about 0.05 s for a 500-character entity,
15 s for 4,800 characters; the evaluator's `max_tokens` (from the gold answers) bounds it.

`accepts_ner` checks the same language in plain Python, so the evaluator can tell whether a server obeyed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

NER_FORMS = ("dict", "list")


# ------------------------------------------------------------------------------------------------ literals


def _ebnf_literal(s: str) -> str:
    """`s` as an xgrammar EBNF string literal: `"` and `\\` escaped, non-printable characters as `\\uXXXX`."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _json_literal(s: str) -> str:
    """The EBNF literal that matches `json.dumps(s, ensure_ascii=False)`, quotes included."""
    return _ebnf_literal(json.dumps(s, ensure_ascii=False))


def _check(text: str, labels: Sequence[str], form: str) -> list[str]:
    if form not in NER_FORMS:
        raise ValueError(f"unknown NER answer form `{form}`; use one of {', '.join(NER_FORMS)}")
    labels = list(labels)
    if not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"`labels` must be distinct non-empty strings, got {labels!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("`text` holds an unpaired surrogate; it cannot be sent or answered") from None
    return labels


# ------------------------------------------------------------------------------------------------- grammar


def ner_grammar(text: str, labels: Sequence[str], form: str = "dict") -> str:
    """An xgrammar EBNF grammar (root rule `root`) admitting exactly the CLUENER answers for `text`.

    `form="dict"`: `{"label": ["entity", ...], ...}`, labels in the order of `labels`, each at most once, each
    with a non-empty list; `form="list"`: `[{"label": "label", "text": "entity"}, ...]`. Both as
    `json.dumps(..., ensure_ascii=False)` writes them (`", "` and `": "` separators, no other whitespace), with
    every entity a non-empty substring of `text`; `{}` / `[]` when there is nothing to answer.
    """
    labels = _check(text, labels, form)
    empty = '"{}"' if form == "dict" else '"[]"'
    if not text or not labels:
        return f"root ::= {empty}\n"
    k = len(labels)
    rules = []
    if form == "dict":
        rules.append(f'root ::= {empty} | "{{" first_0 "}}"')
        for i, label in enumerate(labels):
            rules.append(f"pair_{i} ::= {_ebnf_literal(json.dumps(label, ensure_ascii=False) + ': [')} "
                         'entity (", " entity)* "]"')
            if i + 1 < k:
                rules.append(f"first_{i} ::= pair_{i} rest_{i + 1} | first_{i + 1}")
            else:
                rules.append(f"first_{i} ::= pair_{i}")
            if i > 0:
                rules.append(f'rest_{i} ::= (", " pair_{i})?' + (f" rest_{i + 1}" if i + 1 < k else ""))
    else:
        rules.append(f'root ::= {empty} | "[" item (", " item)* "]"')
        rules.append('item ::= "{\\"label\\": " label ", \\"text\\": " entity "}"')
        rules.append("label ::= " + " | ".join(_json_literal(label) for label in labels))
    rules += _entity_rules(text)
    return "\n".join(rules) + "\n"


def suffix_automaton(text: str) -> list[dict[str, int]]:
    """The transitions of the suffix automaton of `text` (state 0 the start): the smallest deterministic automaton
    whose paths from the start spell exactly the substrings of `text`; at most 2n - 1 states and 3n - 4
    transitions (Blumer et al. 1985), built in linear time."""
    nxt: list[dict[str, int]] = [{}]
    link, length, last = [-1], [0], 0
    for ch in text:
        cur = len(nxt)
        nxt.append({})
        link.append(0)
        length.append(length[last] + 1)
        p = last
        while p != -1 and ch not in nxt[p]:
            nxt[p][ch] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][ch]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                while p != -1 and nxt[p].get(ch) == q:
                    nxt[p][ch] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        last = cur
    return nxt


def _entity_rules(text: str) -> list[str]:
    """`entity ::= "\\"" q_0 "\\""`, q_j the states of the text's suffix automaton: deterministic, so the matcher
    follows one path however often the text repeats itself."""
    nxt = suffix_automaton(text)

    def alternatives(state: int) -> str:
        return " | ".join(f"{_ebnf_literal(json.dumps(ch, ensure_ascii=False)[1:-1])}" + (f" q_{to}" if nxt[to] else "")
                          for ch, to in sorted(nxt[state].items()))

    rules = ['entity ::= "\\"" q_0 "\\""', f"q_0 ::= {alternatives(0)}"]  # q_0: at least one character
    rules += [f"q_{j} ::= ({alternatives(j)})?" for j in range(1, len(nxt)) if nxt[j]]  # may stop anywhere after
    return rules


def ner_structured_outputs(text: str, labels: Sequence[str], form: str = "dict") -> dict:
    """vLLM's `structured_outputs` for a CLUENER request: `{"grammar": ner_grammar(text, labels, form)}`."""
    return {"grammar": ner_grammar(text, labels, form)}


def choice_structured_outputs(choices: Sequence[str]) -> dict:
    """vLLM's `structured_outputs` for a classification request: the answer is one of `choices`."""
    choices = list(choices)
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"`choices` must be a non-empty list of non-empty strings, got {choices!r}")
    return {"choice": choices}


def extra_body(structured_outputs: dict | None) -> dict:
    """The `extra_body` of an `openai` request: `{"structured_outputs": ...}`, or `{}` for no constraint."""
    return {} if structured_outputs is None else {"structured_outputs": structured_outputs}


# ------------------------------------------------------------------------------------------------- checker


def accepts_ner(answer: str, text: str, labels: Sequence[str], form: str = "dict") -> bool:
    """Whether `answer` is in the language of `ner_grammar(text, labels, form)`, checked without xgrammar."""
    labels = _check(text, labels, form)
    try:
        value = json.loads(answer)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        return False
    if json.dumps(value, ensure_ascii=False) != answer:  # whitespace, escapes, repeated keys, trailing text
        return False

    def entity(e: object) -> bool:
        return isinstance(e, str) and e != "" and e in text

    if form == "dict":
        if not isinstance(value, dict) or not set(value) <= set(labels):
            return False
        order = [labels.index(key) for key in value]
        return order == sorted(order) and all(
            isinstance(es, list) and es and all(entity(e) for e in es) for es in value.values())
    return isinstance(value, list) and all(
        isinstance(item, dict) and list(item) == ["label", "text"] and item["label"] in labels
        and entity(item["text"]) for item in value)


class _End(Exception):
    """The answer ended where the language goes on: a prefix so far."""


class _Bad(Exception):
    """The answer left the language."""


def _entity_codes(text: str) -> list[str]:
    """Each character of `text` as `json.dumps(..., ensure_ascii=False)` writes it inside a string."""
    return [json.dumps(ch, ensure_ascii=False)[1:-1] for ch in text]


class _PrefixParser:
    """Reads an answer of the `ner_grammar` language from its start; raises _End where the answer stops early and
    _Bad where it leaves the language."""

    def __init__(self, answer: str, text: str):
        self.s, self.i, self.text = answer, 0, text
        self.codes = set(_entity_codes(text))

    def peek(self) -> str:
        if self.i >= len(self.s):
            raise _End
        return self.s[self.i]

    def lit(self, want: str) -> None:
        for ch in want:
            if self.peek() != ch:
                raise _Bad
            self.i += 1

    def choose(self, options: Sequence[str]) -> str:
        """Consume whichever of `options` (none a prefix of another) the answer continues with."""
        start = self.i
        live = list(options)
        while True:
            done = [o for o in live if self.i - start == len(o)]
            if done:
                return done[0]
            ch = self.peek()
            live = [o for o in live if o[self.i - start] == ch]
            if not live:
                raise _Bad
            self.i += 1

    def entity(self) -> None:
        """`"` + a non-empty span of the text, each character written as json.dumps writes it, + `"`."""
        self.lit('"')
        decoded: list[str] = []
        while True:
            ch = self.peek()
            if ch == '"':
                if not decoded:
                    raise _Bad
                self.i += 1
                return
            if ch == "\\":  # an escape: \" \\ \n … or \u00XX, as long as json.dumps writes it
                code = next((c for c in self.codes if c.startswith("\\") and self.s.startswith(c, self.i)), None)
                if code is None:
                    rest = self.s[self.i:]
                    if any(c.startswith(rest) for c in self.codes if c.startswith("\\")):
                        raise _End  # cut inside an escape that a character of the text has
                    raise _Bad
            else:
                code = ch
                if code not in self.codes:
                    raise _Bad
            decoded.append(json.loads(f'"{code}"'))
            if "".join(decoded) not in self.text:
                raise _Bad
            self.i += len(code)

    def entities(self) -> None:
        """entity (", " entity)* "]" """
        self.entity()
        while self.choose([", ", "]"]) == ", ":
            self.entity()

    def dict_form(self, labels: list[str]) -> None:
        self.lit("{")
        keys = [json.dumps(label, ensure_ascii=False) + ": [" for label in labels]
        first = self.choose(["}", *keys])
        if first == "}":
            return
        last = keys.index(first)
        while True:
            self.entities()
            later = keys[last + 1:]
            if self.choose(["}", ", "] if later else ["}"]) == "}":
                return
            last = keys.index(self.choose(later))

    def list_form(self, labels: list[str]) -> None:
        self.lit("[")
        if self.choose(["]", '{"label": ']) == "]":
            return
        while True:
            self.choose([json.dumps(label, ensure_ascii=False) for label in labels])
            self.lit(', "text": ')
            self.entity()
            self.lit("}")
            if self.choose(["]", ", "]) == "]":
                return
            self.lit('{"label": ')


def accepts_ner_prefix(answer: str, text: str, labels: Sequence[str], form: str = "dict") -> bool:
    """Whether `answer` begins some answer of `ner_grammar(text, labels, form)` (a whole answer included): what a
    constrained answer cut at `max_tokens` (`finish_reason: length`) must be."""
    labels = _check(text, labels, form)
    if not text or not labels:
        return ("{}" if form == "dict" else "[]").startswith(answer)
    parser = _PrefixParser(answer, text)
    try:
        parser.dict_form(labels) if form == "dict" else parser.list_form(labels)
    except _End:
        return True
    except _Bad:
        return False
    return parser.i == len(answer)  # a whole answer, and nothing after it
