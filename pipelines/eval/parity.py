"""`make parity`: training and serving must render the same prompt tokens.

Training side: LLaMA-Factory's own alpaca converter and template (`get_template_and_fix_tokenizer`,
`encode_oneturn`) on the record, with the tokenizer LLaMA-Factory loads. Serving side: the model's own chat
template (`apply_chat_template(…, add_generation_prompt=True)`) on exactly the messages `pipelines.eval.evaluate`
sends, tokenized as vLLM tokenizes a chat prompt (no extra special tokens). Identical ids, or a report of the
first difference.

This module imports LLaMA-Factory and transformers; `pipelines.eval.evaluate` imports it only for `--tokenizer`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.data.records import RecordError, build_messages, load_records
from pipelines.eval import EvalError


@dataclass(frozen=True)
class ParityReport:
    n: int  # records compared
    ok: bool
    message: str  # one sentence


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the two id lists differ (a length difference counts), or None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def describe_difference(record_id: str, train_ids: Sequence[int], serve_ids: Sequence[int],
                        decode_train: Callable[[Sequence[int]], str], decode_serve: Callable[[Sequence[int]], str],
                        context: int = 8) -> str:
    """One sentence naming the record, the token position and the text around it on both sides."""
    i = first_difference(train_ids, serve_ids)
    assert i is not None
    lo = max(0, i - context)

    def around(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> str:
        return repr(decode(ids[lo:i])) + " then " + (repr(decode(ids[i:i + context])) if i < len(ids) else "<end>")

    return (f"record `{record_id}`: the training prompt ({len(train_ids)} tokens) and the serving prompt "
            f"({len(serve_ids)} tokens) differ at token {i}: training has {around(train_ids, decode_train)}, serving "
            f"has {around(serve_ids, decode_serve)}; align `template` in the training config with the served chat "
            f"template.")


def _import_llamafactory() -> Any:
    try:
        from llamafactory.data.converter import AlpacaDatasetConverter
        from llamafactory.data.parser import DatasetAttr
        from llamafactory.data.template import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments, ModelArguments
        from llamafactory.model import load_tokenizer
    except ImportError as e:
        msg = f"LLaMA-Factory cannot be imported ({e}): run the parity check in `.venv` (`make setup`)."
        raise EvalError(msg) from None
    return (AlpacaDatasetConverter, DatasetAttr, get_template_and_fix_tokenizer, DataArguments, ModelArguments,
            load_tokenizer)


class Renderer:
    """Both renderings of a record's prompt, as token ids."""

    def __init__(self, model_path: str, template: str = "qwen"):
        from transformers import AutoTokenizer

        Converter, DatasetAttr, get_template, DataArguments, ModelArguments, load_tokenizer = _import_llamafactory()
        data_args = DataArguments(template=template)
        self.train_tok = load_tokenizer(ModelArguments(model_name_or_path=model_path))["tokenizer"]
        self.template = get_template(self.train_tok, data_args)  # may fix the tokenizer: keep it apart
        self.converter = Converter(DatasetAttr("file", "parity", system="system"), data_args)
        self.serve_tok = AutoTokenizer.from_pretrained(model_path)
        if not self.serve_tok.chat_template:
            raise EvalError(f"the tokenizer of `{model_path}` has no chat template: the server could not render chats.")

    def train_ids(self, record: dict[str, str]) -> list[int]:
        ex = self.converter(record)
        prompt_ids, _ = self.template.encode_oneturn(self.train_tok, ex["_prompt"] + ex["_response"], ex["_system"])
        return list(prompt_ids)

    def serve_ids(self, record: dict[str, str]) -> list[int]:
        text = self.serve_tok.apply_chat_template(build_messages(record), add_generation_prompt=True, tokenize=False)
        return list(self.serve_tok.encode(text, add_special_tokens=False))

    def decode_train(self, ids: Sequence[int]) -> str:
        return self.train_tok.decode(list(ids), skip_special_tokens=False)

    def decode_serve(self, ids: Sequence[int]) -> str:
        return self.serve_tok.decode(list(ids), skip_special_tokens=False)


def check(model_path: str, records: Sequence[dict[str, str]], template: str = "qwen") -> ParityReport:
    """Compare both renderings for every record; stop at the first difference."""
    if not Path(model_path).is_dir():
        raise EvalError(f"tokenizer folder `{model_path}` does not exist: pass the served base model's folder "
                        f"(`MODEL=` for make; `make tiny-base` builds the demo's).")
    try:
        r = Renderer(model_path, template)
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot load the tokenizer or template for `{model_path}` ({e}): pass the served base "
                        f"model's folder and the training config's `template`.") from None
    for rec in records:
        a, b = r.train_ids(rec), r.serve_ids(rec)
        if a != b:
            message = describe_difference(rec["id"], a, b, r.decode_train, r.decode_serve)
            return ParityReport(len(records), False, message)
    return ParityReport(len(records), True,
                        f"{len(records)} prompts render to identical tokens with template `{template}` and the chat "
                        f"template of `{model_path}`.")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines parity", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder whose tokenizer and chat template the server uses")
    ap.add_argument("--data", required=True, help="alpaca JSON list (e.g. data/cluener_val.json)")
    ap.add_argument("--template", default="qwen", help="LLaMA-Factory template of the training config")
    ap.add_argument("--limit", type=int, help="check the first N records only")
    args = ap.parse_args(argv)
    try:
        report = check(args.model, load_records(args.data, args.limit), args.template)
    except (EvalError, RecordError) as e:
        print(f"parity: {e}", file=sys.stderr)
        return 1
    status = "ok" if report.ok else "MISMATCH"
    print(f"parity: {status}: {report.message}", file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
