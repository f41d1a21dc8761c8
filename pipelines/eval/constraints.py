"""Which constraint each request of a task gets, whether an answer obeyed it, and `python -m pipelines constrain`.

The grammars themselves come from `pipelines.eval.grammars` (pure, standard library only, for apps to import
alone); this module ties them to the task registry and to the data: NER records get the span grammar of their
input in the data set's answer form, classification records a choice among their candidate categories (read
back from the converted instruction), generation records nothing.

    python -m pipelines constrain --task cluener [--form dict|list] --text TEXT
    python -m pipelines constrain --task classification --choices 体育,财经

print the `extra_body` JSON that an `openai` client sends with the request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipelines.data.converters import classification_categories
from pipelines.eval import EvalError, grammars, tasks
from pipelines.eval.tasks import Task

MODES = ("none", "auto", "both")
#: Answers checked against the constraint before the rest of a constrained run is sent.
PROBE = 4


def answer_form(records: Sequence[dict[str, str]], source: str) -> str:
    """The NER answer form of a data set, from its gold answers: `dict` (`{…}`) or `list` (`[…]`), the same for all."""
    forms = {"{": "dict", "[": "list"}
    found = {forms.get(r["output"].lstrip()[:1]) for r in records}
    if None in found or len(found) != 1:
        raise EvalError(f"the gold answers of `{source}` are not all JSON objects or all JSON lists, so no answer form "
                        "can be constrained: regenerate the data with `make data`.")
    form = found.pop()
    assert form is not None  # refused just above
    return form


def record_constraint(task: Task, record: dict[str, str], form: str | None) -> dict[str, Any] | None:
    """The `structured_outputs` of one record's request under `--constrain auto`, or None (no constraint)."""
    if task.constraint == "spans":
        return grammars.ner_structured_outputs(record.get("input") or "", task.labels, form or "dict")
    if task.constraint == "choice":
        choices = classification_categories(record["instruction"])
        if not choices:
            raise EvalError(f"record `{record['id']}` names no candidate categories in its instruction, so its answer "
                            "cannot be constrained to one: convert the data with `make data` or pass `--constrain none`.")
        return grammars.choice_structured_outputs(choices)
    return None


def obeys(task: Task, record: dict[str, str], form: str | None, answer: str, cut: bool = False) -> bool:
    """Whether an answer lies in the language its record's constraint admits; `cut` (`finish_reason: length`):
    whether it begins an answer of that language."""
    if task.constraint == "spans":
        check = grammars.accepts_ner_prefix if cut else grammars.accepts_ner
        return check(answer, record.get("input") or "", task.labels, form or "dict")
    if task.constraint == "choice":
        choices = classification_categories(record["instruction"]) or []
        return any(c.startswith(answer) for c in choices) if cut else answer in choices
    return True


def gold_outside_input(records: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Gold NER entities that are not a substring of their record's input: a span constraint can never produce
    them, so they are counted and reported (never a crash)."""
    from pipelines.eval.scoring import parse_entities

    total = outside = 0
    examples: list[dict[str, str]] = []
    for r in records:
        for label, text in sorted(parse_entities(r["output"]).entities):
            total += 1
            if text not in (r.get("input") or ""):
                outside += 1
                if len(examples) < 3:
                    examples.append({"id": r["id"], "label": label, "text": text})
    return {"gold_entities": total, "outside_input": outside, "examples": examples}


def describe(task: Task) -> str:
    return {"spans": "entities that are spans of the input, in the data's answer form",
            "choice": "one of the record's candidate categories"}.get(task.constraint or "", "no constraint")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines constrain", description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help=f"an evaluation task: one of {', '.join(tasks.TASKS)}")
    ap.add_argument("--form", choices=grammars.NER_FORMS, default="dict", help="NER answer form (default dict)")
    ap.add_argument("--text", help="NER: the input text whose spans the entities must be")
    ap.add_argument("--choices", help="classification: the candidate categories, comma-separated")
    args = ap.parse_args(argv)
    try:
        task = tasks.get(args.task)
        if task.constraint == "spans":
            if not args.text:
                raise EvalError("`--text` is required for an NER task: the entities must be spans of it.")
            so = grammars.ner_structured_outputs(args.text, task.labels, args.form)
        elif task.constraint == "choice":
            choices = [c.strip() for c in (args.choices or "").split(",") if c.strip()]
            if not choices:
                raise EvalError("`--choices` is required for a classification task, e.g. `--choices 体育,财经`.")
            so = grammars.choice_structured_outputs(choices)
        else:
            so = None
    except (EvalError, ValueError) as e:
        print(f"constrain: {e}", file=sys.stderr)
        return 1
    print(json.dumps(grammars.extra_body(so), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
