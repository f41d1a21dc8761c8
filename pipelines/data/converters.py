"""One small pure function per source data set: a raw row → an alpaca record, in a registry by name.

A converter takes one parsed raw row (whatever JSON value the source holds) and returns
`{"instruction", "input", "output", "system"}` (all strings; `pipelines.data.convert` adds the `id`), or raises
`RowError` naming the key at fault. No I/O here, and neither LLaMA-Factory nor vLLM: `pipelines.data.convert` reads
the files, counts, splits and writes.

The CLUENER prompt constants (`CLUENER_TYPES`, `CLUENER_SYSTEM`, `CLUENER_INSTRUCTIONS`) are written into the
data, and the evaluator imports them from here so that training and serving use the very same prompt.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.common.errors import PipelinesError

# ------------------------------------------------------------------------------------------------ registry


class RowError(PipelinesError, ValueError):
    """A row the converter cannot use. `reason` is a short label for the skip counts; the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class UnknownConverterError(PipelinesError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Converter:
    name: str
    fn: Callable[..., dict]
    raw_format: str  # "lines" (JSON lines), "list" (one JSON list) or "any" (either, by the first character)
    layout: str = "file"  # "file": one raw file, split by seed; "cluener": a folder with train.json + dev.json
    duplicates: str = "error"  # "error": a repeated row is a row error; "keep": kept (unless --dedupe)
    # What identifies a row: the same key with the same record is a repeat, with another record a conflict
    # (`pipelines.data.convert`); a key holding the answer, as this default does, admits no conflicts.
    key: Callable[[dict], tuple] = lambda r: (r["system"], r["instruction"], r["input"], r["output"])
    sample: str | None = None  # its bundled raw sample under data/raw/ (`make data` converts every one)


REGISTRY: dict[str, Converter] = {}


def register(name: str, **kwargs) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as converter `name`; a name can be registered only once."""

    def wrap(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"converter `{name}` is already registered (by `{REGISTRY[name].fn.__name__}`)")
        REGISTRY[name] = Converter(name=name, fn=fn, **kwargs)
        return fn

    return wrap


def get(name: str) -> Converter:
    """The converter called `name`, or an error that suggests the closest names."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
    raise UnknownConverterError(
        f"unknown converter `{name}`; {hint}available: {', '.join(f'`{n}`' for n in sorted(REGISTRY))}."
    )


# ------------------------------------------------------------------------------------------------- helpers


def _obj(row: object) -> dict:
    if not isinstance(row, dict):
        raise RowError("not an object", f"the row is a JSON {type(row).__name__}, not an object")
    return row


def _text(row: dict, key: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in row:
        if required:
            raise RowError(f"missing {key}", f"the key `{key}` is missing")
        return ""
    return _string(row[key], key, empty_ok=empty_ok)


def _string(value: object, key: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise RowError(f"bad {key}", f"`{key}` is a {type(value).__name__}, not a string")
    if not empty_ok and not value.strip():
        raise RowError(f"empty {key}", f"`{key}` is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"bad {key}", f"`{key}` holds an unpaired surrogate (`\\ud800`-style escape)") from None
    return value


def _record(instruction: str, input_: str, output: str, system: str = "") -> dict:
    return {"instruction": instruction, "input": input_, "output": output, "system": system}


# ------------------------------------------------------------------------------------------------- CLUENER

#: The 10 CLUENER entity types, in schema order (the order of answers).
CLUENER_TYPES = ("address", "book", "company", "game", "government", "movie", "name", "organization",
                 "position", "scene")
CLUENER_FORMATS = ("dict", "list")
CLUENER_SYSTEM = "你是一个中文命名实体识别助手：从用户给出的文本中抽取实体，只用 JSON 回答，不输出其他内容。"
_TYPE_LIST = "、".join(CLUENER_TYPES)
#: The user instruction per output format; the user message is this + "\n" + the text. The examples list the
#: types in schema order, as every answer does (the constrained decoder admits only that order).
CLUENER_INSTRUCTIONS = {
    "dict": f"抽取下面文本中的实体，实体类型只能是：{_TYPE_LIST}。以 JSON 对象回答，键是类型，值是该类型实体的列表，"
            '例如 {"company": ["浙商银行"], "name": ["叶老桂"]}；没有实体时回答 {}。',
    "list": f"抽取下面文本中的实体，实体类型只能是：{_TYPE_LIST}。以 JSON 列表回答，每个实体一项，"
            '例如 [{"label": "company", "text": "浙商银行"}, {"label": "name", "text": "叶老桂"}]；没有实体时回答 []。',
}


def cluener_entities(text: str, label: object) -> list[tuple[str, str, int]]:
    """Validate a raw CLUENER label against `text`: `[(type, entity, first start)]` in answer order.

    Answer order: types in schema order, then entities by their first position; each (type, entity) once.
    """
    if not isinstance(label, dict):
        raise RowError("bad label", f"`label` is a {type(label).__name__}, not an object of types")
    found = []
    for etype, entities in label.items():
        if etype not in CLUENER_TYPES:
            raise RowError("unknown type", f"`label` has the unknown entity type `{etype}` (known: {_TYPE_LIST})")
        if not isinstance(entities, dict):
            raise RowError("bad label", f"`label.{etype}` is not an object of entity → spans")
        for entity, spans in entities.items():
            where = f"`label.{etype}.{entity}`"
            if not isinstance(spans, list) or not spans:
                raise RowError("bad span", f"{where} has no list of [start, end] spans")
            starts = []
            for span in spans:
                if not (isinstance(span, list) and len(span) == 2 and all(type(i) is int for i in span)):
                    raise RowError("bad span", f"{where} has the span `{json.dumps(span)}`, not [start, end]")
                start, end = span
                if not 0 <= start <= end < len(text):
                    raise RowError("span out of range",
                                   f"{where} has the span [{start}, {end}] outside a text of {len(text)} characters")
                if text[start:end + 1] != entity:
                    raise RowError("span text mismatch", f"{where} has the span [{start}, {end}], "
                                   f"which covers `{text[start:end + 1]}` in the text")
                starts.append(start)
            found.append((etype, entity, min(starts)))
    order = {t: i for i, t in enumerate(CLUENER_TYPES)}
    return sorted(found, key=lambda f: (order[f[0]], f[2]))


def cluener_target(entities: list[tuple[str, str, int]], fmt: str = "dict") -> str:
    """The answer string: a JSON object (`dict`) or list (`list`), `json.dumps(..., ensure_ascii=False)`."""
    if fmt == "dict":
        answer: dict[str, list[str]] = {}
        for etype, entity, _ in entities:
            answer.setdefault(etype, []).append(entity)
        return json.dumps(answer, ensure_ascii=False)
    if fmt == "list":
        return json.dumps([{"label": t, "text": e} for t, e, _ in entities], ensure_ascii=False)
    raise ValueError(f"unknown CLUENER format `{fmt}`; use one of {', '.join(CLUENER_FORMATS)}")


@register("cluener", raw_format="lines", layout="cluener", key=lambda r: (r["input"],), sample="cluener_sample")
def cluener(row: object, fmt: str = "dict") -> dict:
    row = _obj(row)
    text = _text(row, "text")
    if "label" not in row:
        raise RowError("missing label", "the key `label` is missing")
    entities = cluener_entities(text, row["label"])
    return _record(CLUENER_INSTRUCTIONS[fmt], text, cluener_target(entities, fmt), CLUENER_SYSTEM)


# ------------------------------------------------------------------------------- instruction data sets


def _alpaca(row: object, system: str | None = None) -> dict:
    row = _obj(row)
    own_system = _text(row, "system", required=False, empty_ok=True)
    return _record(_text(row, "instruction"), _text(row, "input", required=False, empty_ok=True),
                   _text(row, "output"), own_system if system is None else system)


@register("ruozhiba", raw_format="list", sample="ruozhiba_sample.json")
def ruozhiba(row: object, fmt: str = "dict") -> dict:
    """hfl/ruozhiba_gpt4 (gpt4o / gpt4t): already {instruction, input, output}; the model's default system."""
    return _alpaca(row, system="")


HUANHUAN_SYSTEM = "现在你要扮演皇帝身边的女人——甄嬛。请以甄嬛的身份和口吻回答。"


@register("huanhuan", raw_format="list", duplicates="keep", sample="huanhuan_sample.json")
def huanhuan(row: object, fmt: str = "dict") -> dict:
    """huanhuan-chat role-play: already alpaca; the role is set by the system prompt."""
    return _alpaca(row, system=HUANHUAN_SYSTEM)


CLASSIFICATION_SYSTEM = "你是一个文本分类助手：根据候选类别判断文本的类别，只回答类别名称。"


CLASSIFICATION_PREFIX = "判断下面文本的类别，候选类别："


def classification_instruction(categories: list[str]) -> str:
    return f"{CLASSIFICATION_PREFIX}{'、'.join(categories)}。"


def classification_categories(instruction: str) -> list[str] | None:
    """The candidate categories of a converted classification record (the inverse of `classification_instruction`),
    or None when the instruction is not one this converter wrote."""
    if not (instruction.startswith(CLASSIFICATION_PREFIX) and instruction.endswith("。")):
        return None
    names = instruction[len(CLASSIFICATION_PREFIX):-1].split("、")
    return names if all(names) else None


# The key is the question without its answer: the same text with another label is a conflict, not a new row.
@register("classification", raw_format="any", key=lambda r: (r["system"], r["instruction"], r["input"]),
          sample="classification_sample.json")
def classification(row: object, fmt: str = "dict") -> dict:
    """zh_cls_fudan-news style: `{"text", "category": [candidates], "output": label}` (`label` also read)."""
    row = _obj(row)
    text = _text(row, "text")
    categories = row.get("category")
    if not (isinstance(categories, list) and categories and all(isinstance(c, str) and c for c in categories)):
        raise RowError("bad category", "`category` is not a non-empty list of category names")
    categories = [_string(c, "category") for c in categories]
    if any("、" in c for c in categories):
        raise RowError("bad category", "a `category` name contains `、`, which separates the candidates in the prompt")
    label = _text(row, "output" if "output" in row else "label")
    if label not in categories:
        raise RowError("label not in category", f"the label `{label}` is not among `category`")
    return _record(classification_instruction(categories), text, label, CLASSIFICATION_SYSTEM)


@register("alpaca", raw_format="any")
def alpaca(row: object, fmt: str = "dict") -> dict:
    """Any alpaca file: {instruction, input?, output, system?}, validated and passed through."""
    return _alpaca(row)
