"""The evaluation tasks, registered by name: how answers are scored, reported and summarised.

One entry per task (lm-eval's registry in small): its scoring kind, answer form, main metric, the rows of the
evaluation report, the keys printed after a run, the columns of the run report and the scale of its figures.
Nothing else in the project spells a task's properties; `make all`, the run report, the sweep's leaderboard and
the benchmarks ask here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pipelines.data.converters import CLUENER_TYPES
from pipelines.eval import EvalError

SCALES = {
    "ner": "fractions in [0, 1]",
    "generation": "bleu_4, rouge_1, rouge_2, rouge_l in percent (0-100), as LLaMA-Factory's predict_bleu-4 and "
    "predict_rouge-*; rates are fractions in [0, 1]; lengths in characters",
    "classification": "fractions in [0, 1]; lengths in characters",
}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "ner" | "generation" | "classification": which scoring function
    answer_form: str  # what an answer is: "json entities", "text" or "label"
    main_metric: str  # the figure a leaderboard sorts by (higher is better)
    rows: tuple[str, ...]  # metrics of the evaluation report, in order
    summary: tuple[str, ...]  # figures printed after a run
    columns: tuple[tuple[str, str], ...]  # (header, metric) of the run report's table
    labels: tuple[str, ...] = ()  # NER: the entity types an answer may name
    constraint: str | None = None  # what `--constrain auto` asks the server for: "spans", "choice" or none

    @property
    def scale(self) -> str:
        return SCALES[self.kind]

    def val_data(self, data_dir: str = "data") -> str:
        """The validation split `make data` writes for this task."""
        return f"{data_dir.rstrip('/')}/{self.name}_val.json"


NER_ROWS = ("micro_f1", "precision", "recall", "macro_f1", "type_f1", "exact_match",
            "invalid_json_rate", "trailing_text_rate", "truncated_rate", "mean_length")
GEN_ROWS = ("bleu_4", "rouge_1", "rouge_2", "rouge_l", "truncated_rate", "mean_length", "mean_reference_length")
CLS_ROWS = ("accuracy", "truncated_rate", "mean_length")
NER_COLUMNS = (("n", "n"), ("valid JSON", "valid_json_rate"), ("trailing text", "trailing_text_rate"),
               ("type-F1", "type_f1"), ("entity micro-F1", "micro_f1"), ("precision", "precision"),
               ("recall", "recall"), ("macro-F1", "macro_f1"), ("exact match", "exact_match"))
GEN_COLUMNS = (("n", "n"), ("BLEU-4", "bleu_4"), ("ROUGE-1", "rouge_1"), ("ROUGE-2", "rouge_2"),
               ("ROUGE-L", "rouge_l"), ("mean length", "mean_length"))
CLS_COLUMNS = (("n", "n"), ("accuracy", "accuracy"), ("mean length", "mean_length"))

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"evaluation task `{task.name}` is registered twice")
    if task.kind not in SCALES:
        raise ValueError(f"evaluation task `{task.name}` has the unknown kind `{task.kind}`")
    TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    """The task registered as `name`; an unknown name is one sentence with the closest names."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, list(TASKS), n=2)
    hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
    raise EvalError(f"unknown task `{name}`: {hint}available: {', '.join(TASKS)}.")


def _ner(name: str, labels: tuple[str, ...]) -> Task:
    return Task(name, "ner", "json entities", "micro_f1", NER_ROWS, ("micro_f1", "type_f1", "trailing_text_rate"),
                NER_COLUMNS, labels, constraint="spans")


def _generation(name: str) -> Task:
    return Task(name, "generation", "text", "rouge_l", GEN_ROWS, ("bleu_4", "rouge_l"), GEN_COLUMNS)


register(_ner("cluener", CLUENER_TYPES))
register(_generation("ruozhiba"))
register(_generation("huanhuan"))
register(_generation("generation"))
register(Task("classification", "classification", "label", "accuracy", CLS_ROWS, ("accuracy",), CLS_COLUMNS,
              constraint="choice"))
