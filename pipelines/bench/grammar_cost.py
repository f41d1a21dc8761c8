"""What the NER span grammar costs xgrammar, by text length × repetition × entity length (docs/RELIABILITY.md).

    .venv/bin/python -m pipelines.bench.grammar_cost [--lengths 500,2000,5000] [--texts random,p1,p10]
        [--entities 16,64,500,4800] [--grammar automaton|chain]

For each text (`random`: random CJK characters; `pN`: N distinct characters repeated) it compiles the dict-form
grammar of `pipelines.eval.grammars` (`automaton`, what is sent) or the per-start chain it replaced (`chain`:
`s_i ::= c_i s_{i+1}?`) with xgrammar, with no vocabulary (the matcher's own cost), and times a matcher accepting
`{"name": ["` + the text's first L characters, then closing the answer. Needs xgrammar (in .venv).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from pipelines.data.converters import CLUENER_TYPES
from pipelines.eval.grammars import _ebnf_literal, ner_grammar


def chain_grammar(text: str) -> str:
    """The grammar before the suffix automaton: one rule per start of the entity (nondeterministic)."""
    head = ner_grammar(text, CLUENER_TYPES).split("entity ::=")[0]
    n = len(text)
    rules = ['entity ::= "\\"" (' + " | ".join(f"s_{i}" for i in range(n)) + ') "\\""']
    for i, ch in enumerate(text):
        c = _ebnf_literal(json.dumps(ch, ensure_ascii=False)[1:-1])
        rules.append(f"s_{i} ::= {c} s_{i + 1}?" if i + 1 < n else f"s_{i} ::= {c}")
    return head + "\n".join(rules) + "\n"


def make_text(kind: str, n: int, rnd: random.Random) -> str:
    pool = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    if kind == "random":
        return "".join(rnd.choice(pool) for _ in range(n))
    unit = "".join(pool[:int(kind[1:])])
    return (unit * (n // len(unit) + 1))[:n]


def main(argv: list[str] | None = None) -> int:
    import xgrammar as xgr

    ap = argparse.ArgumentParser(prog="python -m pipelines.bench.grammar_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="500,2000,5000")
    ap.add_argument("--texts", default="random,p1,p10")
    ap.add_argument("--entities", default="16,64,500,4800")
    ap.add_argument("--grammar", choices=["automaton", "chain"], default="automaton")
    args = ap.parse_args(argv)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False)
    rnd = random.Random(0)
    for n in map(int, args.lengths.split(",")):
        for kind in args.texts.split(","):
            text = make_text(kind, n, rnd)
            grammar = ner_grammar(text, CLUENER_TYPES) if args.grammar == "automaton" else chain_grammar(text)
            t0 = time.perf_counter()
            compiled = compiler.compile_grammar(xgr.Grammar.from_ebnf(grammar))
            compile_s = time.perf_counter() - t0
            for length in (int(x) for x in args.entities.split(",")):
                if length > n:
                    continue
                matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
                t0 = time.perf_counter()
                ok = matcher.accept_string('{"name": ["' + text[:length]) and matcher.accept_string('"]}')
                match_s = time.perf_counter() - t0
                print(f"{args.grammar:9} text {n:>6} {kind:>6}  entity {length:>5}  compile {compile_s:7.3f} s  "
                      f"accept {match_s:8.3f} s  {'ok' if ok and matcher.is_terminated() else 'REFUSED'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
