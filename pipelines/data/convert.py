"""`make data`: convert a raw data set into alpaca files plus its entries in `dataset_info.json`.

    python -m pipelines convert NAME --raw PATH --out-dir DIR [--format dict|list] [--on-error fail|skip]
                                [--val-size N] [--seed S] [--dedupe]

Writes `DIR/<name>_train.json` and `DIR/<name>_val.json` and adds or replaces only the entries `<name>_train`
and `<name>_val` of `DIR/dataset_info.json` (temp file + rename). For `cluener`, `--raw` is the folder holding
`train.json` and `dev.json` (dev.json becomes the val set); other sources are one file, split by `--seed`.

Raw files are never edited. A file-level problem (empty file, UTF-8 BOM, another encoding than UTF-8 such as GBK,
CRLF endings, a malformed JSON list, the wrong top-level type) always fails; a bad row fails too, or is counted and
skipped with `--on-error skip`. Everything is read and checked (`dataset_info.json` included) before anything is
written, so a failed run leaves the output folder as it was.

A row whose key (for CLUENER its text) comes again with the same record is a repeat: an error, kept (`huanhuan`),
or skipped as `duplicate` with `--dedupe`. A row whose key comes again with another answer (the same text, another
label) is a conflict: `--dedupe` does not choose between them, so it is an error, and with `--on-error skip` every
row of that key is skipped as `conflict` (the first one too: neither label can be trusted).

`--val-size`: 0 (no val set), a fraction in (0, 1), or a whole count >= 1. Without a val set, an earlier run's
`<name>_val.json` and its entry are removed (its rows are in the train file now) and the summary says so.

Reading, checking, converting and writing stay one module: every check has to run before the first write, and
that order is what this module keeps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipelines.common.errors import PipelinesError
from pipelines.common.io import atomic_write
from pipelines.common.paths import DATA_DIR
from pipelines.data import converters
from pipelines.data.converters import Converter, RowError

DEFAULT_VAL_SIZE = 0.1
DEFAULT_SEED = 42
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
SKIP_HINT = "fix the row or rerun with `--on-error skip` to count and skip such rows"
VAL_SIZE_USE = "use 0 (no val set), a fraction in (0, 1) or a whole count such as 200"


class ConvertError(PipelinesError):
    """A one-sentence problem with the input or the options; `main` prints it without a traceback."""


@dataclass
class Report:
    name: str
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    written: dict[str, int] = field(default_factory=dict)  # split -> records
    outputs: dict[str, Path] = field(default_factory=dict)  # split -> file
    removed: list[Path] = field(default_factory=list)  # stale split files of an earlier run

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
        files = ", ".join(f"{s} {self.written[s]} → {self.outputs[s]}" for s in self.written)
        removed = "".join(f"; removed the stale {p} and its dataset_info entry (no val set this time, its rows may "
                          "be in train now)" for p in self.removed)
        return (f"{self.name}: read {self.read}, written {sum(self.written.values())} ({files}), "
                f"skipped {skipped}{f' ({reasons})' if reasons else ''}{removed}")


def val_size_problem(value: float) -> str | None:
    """Why `--val-size value` is refused, or None: 0, a fraction in (0, 1), or a whole count >= 1."""
    if not math.isfinite(value):
        return f"`--val-size {value}` is not a finite number; {VAL_SIZE_USE}."
    if value < 0:
        return f"`--val-size {value:g}` is negative; {VAL_SIZE_USE}."
    if value > 1 and value != int(value):
        return f"`--val-size {value:g}` is neither a fraction in (0, 1) nor a whole count; {VAL_SIZE_USE}."
    return None


def val_size_arg(text: str) -> float:
    """argparse type of `--val-size`: refuses nan, inf, negatives and non-whole numbers above 1 at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`--val-size {text}` is not a number; {VAL_SIZE_USE}.") from None
    problem = val_size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


# ---------------------------------------------------------------------------------------------- reading


def _other_encoding(path: Path, data: bytes) -> None:
    """A file that is not UTF-8 but decodes as GBK (or GB18030) and holds Chinese text fails as a whole: skipping
    its rows one by one would skip them all."""
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
    for encoding in ("gbk", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if not any("\u4e00" <= c <= "\u9fff" for c in text):
            return
        sample = next(ln for ln in text.splitlines() if any("\u4e00" <= c <= "\u9fff" for c in ln)).strip()[:24]
        name = encoding.upper()
        out = path.with_name(f"{path.stem}.utf8{path.suffix}")
        raise ConvertError(f"`{path}` line {line} is not valid UTF-8; it looks like {name} (decoded as {name} it "
                           f"reads `{sample}`): convert it with `iconv -f {name} -t UTF-8 {path} > {out}` and point "
                           "`--raw` at the UTF-8 file.")


def _file_checks(path: Path, data: bytes) -> None:
    if not data.strip():
        raise ConvertError(f"`{path}` line 1: the file is empty; point `--raw` at a file with records.")
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConvertError(f"`{path}` line 1: the file starts with a UTF-8 byte-order mark; "
                           "save it as UTF-8 without BOM.")
    _other_encoding(path, data)
    cr = data.find(b"\r")
    if cr >= 0:
        line = data.count(b"\n", 0, cr) + 1
        raise ConvertError(f"`{path}` line {line}: the file has CRLF (Windows) line endings; "
                           "convert it to LF endings (e.g. `dos2unix`).")


def _read_json_lines(path: Path, data: bytes) -> Iterator[tuple[int, object]]:
    """(line number, parsed value or RowError) for each non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, RowError("invalid UTF-8", f"byte {e.start + 1} is not valid UTF-8")
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            yield number, RowError("malformed JSON", f"the line is not valid JSON ({e.msg}, column {e.colno})")


def _json_list(path: Path, data: bytes, name: str) -> Iterator[tuple[int, object]]:
    """(line number where the element starts, parsed value) for each element of a top-level JSON list."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConvertError(f"`{path}` line {line}: byte {e.start + 1} is not valid UTF-8; "
                           "save the file as UTF-8.") from None
    decoder = json.JSONDecoder()
    ws = " \t\n\r"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def fail(e: json.JSONDecodeError) -> ConvertError:
        return ConvertError(f"`{path}` line {e.lineno}: the file is not valid JSON ({e.msg}, column {e.colno}); "
                            "fix the JSON list.")

    i = skip(0)
    if text[i] != "[":
        try:
            kind = type(decoder.raw_decode(text, i)[0]).__name__
        except json.JSONDecodeError:
            kind = "not JSON"
        kind = {"dict": "a JSON object", "str": "a string", "int": "a number", "float": "a number"}.get(kind, kind)
        raise ConvertError(f"`{path}` line {text.count(chr(10), 0, i) + 1}: the top level is {kind}, "
                           f"but `{name}` expects a JSON list of records.")
    i, line, counted = skip(i + 1), 1, 0
    if i < len(text) and text[i] == "]":
        i = len(text)  # an empty list: no records, caught by the caller
    while i < len(text):
        line += text.count("\n", counted, i)
        counted = i
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise fail(e) from None
        yield line, value
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] == "]":
            if skip(i + 1) < len(text):
                n = text.count("\n", 0, skip(i + 1)) + 1
                raise ConvertError(f"`{path}` line {n}: there is text after the closing `]`; remove it.")
            break
        else:
            raise fail(json.JSONDecodeError("expected `,` or `]`", text, i))


def read_rows(path: Path, raw_format: str, name: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value or RowError) for each record of `path`; file-level problems raise."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConvertError(f"`{path}` cannot be read ({e.strerror}); check `--raw`.") from None
    _file_checks(path, data)
    if raw_format == "any":
        raw_format = "list" if data.lstrip().startswith(b"[") else "lines"
    if raw_format == "lines":
        return _read_json_lines(path, data)
    return _json_list(path, data, name)


# ------------------------------------------------------------------------------------------- converting


@dataclass
class Seen:
    """What `convert_file` has met so far, across the files of one conversion: key → (file, line, record, id)."""
    first: dict = field(default_factory=dict)
    conflicted: set = field(default_factory=set)  # keys met with two different records
    dropped: set = field(default_factory=set)  # ids of records already kept, dropped later as conflicts


def convert_file(conv: Converter, path: Path, report: Report, *, fmt: str, on_error: str, dedupe: bool,
                 id_prefix: str, seen: Seen | None = None) -> list[dict]:
    """Convert every row of `path`, counting reads and skips in `report`; `seen` carries keys across files.

    Records dropped afterwards as conflicts (an earlier row whose key a later row repeats with another answer)
    are in `seen.dropped`: the caller leaves them out (`convert` does)."""
    seen = Seen() if seen is None else seen
    drop_duplicates = dedupe or conv.duplicates == "error"
    answer = "label" if conv.name in ("cluener", "classification") else "output"
    records = []
    big = path.stat().st_size > 1 << 20
    rows = tqdm(read_rows(path, conv.raw_format, conv.name), desc=path.name, unit=" rows", disable=not big or None,
                leave=False)
    for ordinal, (line, row) in enumerate(rows):
        report.read += 1
        rid = f"{id_prefix}{ordinal:05d}"
        try:
            if isinstance(row, RowError):
                raise row
            record = conv.fn(row, fmt=fmt)
            key = conv.key(record)
            if key in seen.first:
                first_path, first_line, first, first_id = seen.first[key]
                where = f"line {first_line}" if first_path == path else f"`{first_path}` line {first_line}"
                if key in seen.conflicted or first != record:
                    if on_error == "skip" and first_id not in seen.dropped:
                        seen.dropped.add(first_id)  # the first one of a conflict goes too
                        report.skipped["conflict"] += 1
                    seen.conflicted.add(key)
                    raise RowError("conflict", f"the text of {where} comes again with another {answer} "
                                   "(`--dedupe` drops exact repeats only)")
                if drop_duplicates:
                    if dedupe:  # asked for: a counted skip, not an error
                        report.skipped["duplicate"] += 1
                        continue
                    raise RowError("duplicate", f"the row repeats {where}")
            else:
                seen.first[key] = (path, line, record, rid)
        except RowError as e:
            if on_error == "skip":
                report.skipped[e.reason] += 1
                continue
            raise ConvertError(f"`{path}` line {line}: {e.detail}; {SKIP_HINT}.") from None
        records.append({"id": rid, **record})
    return records


def split(records: list[dict], val_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded train/val split, both in source order. `val_size` < 1 is a fraction, >= 1 a count."""
    n_val = round(len(records) * val_size) if val_size < 1 else int(val_size)
    if n_val >= len(records):
        raise ConvertError(f"`--val-size {val_size:g}` leaves no training records out of {len(records)}; "
                           "use a smaller value.")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val])


def convert(name: str, raw: Path, out_dir: Path, *, fmt: str = "dict", on_error: str = "fail",
            val_size: float | None = None, seed: int = DEFAULT_SEED, dedupe: bool = False) -> Report:
    """Convert source `name` from `raw` into `out_dir`; returns the counts. Raises ConvertError."""
    try:
        conv = converters.get(name)
    except converters.UnknownConverterError as e:
        raise ConvertError(str(e)) from None
    if fmt not in converters.CLUENER_FORMATS:
        raise ConvertError(f"`--format {fmt}` is unknown; use one of {', '.join(converters.CLUENER_FORMATS)}.")
    if on_error not in ("fail", "skip"):
        raise ConvertError(f"`--on-error {on_error}` is unknown; use `fail` or `skip`.")
    raw, out_dir = Path(raw), Path(out_dir)
    if val_size is not None and val_size_problem(val_size):
        raise ConvertError(val_size_problem(val_size))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"`--out-dir {out_dir}` is a file, not a folder; point it at a folder.")
    info_path = out_dir / "dataset_info.json"
    info = read_dataset_info(info_path)  # a broken one fails before anything is written
    for target in (out_dir / f"{name}_train.json", out_dir / f"{name}_val.json", info_path):
        if target.exists() and not target.is_file():
            raise ConvertError(f"`{target}` is a folder, not a file; remove it and rerun.")
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConvertError(f"`--out-dir {out_dir}` is not writable; fix its permissions or choose another folder.")
    report = Report(name)
    options: dict[str, Any] = dict(fmt=fmt, on_error=on_error, dedupe=dedupe)
    seen = Seen()  # for cluener, repeats across train and dev count too: dev must not leak into train
    if conv.layout == "cluener":
        if val_size is not None:
            raise ConvertError(f"`--val-size` does not apply to `{name}`, whose val set is `{raw / 'dev.json'}`.")
        files = {"train": raw / "train.json", "val": raw / "dev.json"}
        missing = [f"`{f}`" for f in files.values() if not f.is_file()]
        if missing:
            raise ConvertError(f"{' and '.join(missing)} not found; `--raw` must be a folder holding "
                               "`train.json` and `dev.json`.")
        splits = {s: convert_file(conv, f, report, **options, id_prefix=f"{name}-{f.stem}-", seen=seen)
                  for s, f in files.items()}
        splits = {s: [r for r in records if r["id"] not in seen.dropped] for s, records in splits.items()}
    else:
        if not raw.is_file():
            raise ConvertError(f"`{raw}` is not a file; `--raw` must be the raw `{name}` file.")
        records = convert_file(conv, raw, report, **options, id_prefix=f"{name}-", seen=seen)
        records = [r for r in records if r["id"] not in seen.dropped]
        val_size = DEFAULT_VAL_SIZE if val_size is None else val_size
        if not records:
            splits = {"train": records}
        else:
            train, val = split(records, val_size, seed)
            splits = {"train": train, "val": val} if val else {"train": train}
    if report.read == 0:
        raise ConvertError(f"`{raw}` line 1: the file holds no records; point `--raw` at a file with records.")
    for s, records in splits.items():
        if not records:
            raise ConvertError(f"`{raw}`: no {s} records left out of {report.read} read "
                               f"({sum(report.skipped.values())} skipped); check the input.")
    assert report.read == sum(map(len, splits.values())) + sum(report.skipped.values())

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvertError(f"`--out-dir {out_dir}` cannot be created ({e.strerror}); choose another folder.") from None
    path = out_dir
    try:
        for path in [out_dir / f"{name}_{s}.json" for s in ("train", "val") if s not in splits]:
            if path.is_file():  # first, so that no run can pair new train rows with an old val file
                path.unlink()
                report.removed.append(path)
        for s, records in splits.items():
            path = out_dir / f"{name}_{s}.json"
            atomic_write(path, json.dumps(records, ensure_ascii=False, indent=2) + "\n")
            report.written[s], report.outputs[s] = len(records), path
        path = info_path
        update_dataset_info(info_path, name, list(splits), info=info)
    except OSError as e:
        raise ConvertError(f"writing `{path}` failed ({e.strerror}); free the space or fix the folder and rerun.") \
            from None
    return report


# -------------------------------------------------------------------------------------------- writing


def dataset_entry(file_name: str) -> dict:
    """A `dataset_info.json` entry naming every column (a partial map makes LLaMA-Factory drop the others)."""
    return {"file_name": file_name, "formatting": "alpaca", "columns": dict(COLUMNS)}


def read_dataset_info(path: Path) -> dict:
    """The entries of an existing `dataset_info.json` ({} when there is none); a broken one raises, naming its line."""
    if not path.exists():
        return {}
    data = b""
    try:
        data = path.read_bytes()
        info = json.loads(data.decode("utf-8"))
    except OSError as e:
        raise ConvertError(f"`{path}` cannot be read ({e.strerror}); fix its permissions or delete it and rerun "
                           "`make data`.") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConvertError(f"`{path}` line {line}: not valid UTF-8; delete it and rerun `make data`.") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"`{path}` line {e.lineno}: not valid JSON ({e.msg}); delete it and rerun `make data`.") \
            from None
    if not isinstance(info, dict):
        raise ConvertError(f"`{path}` line 1: the top level is not an object; delete it and rerun `make data`.")
    return info


def update_dataset_info(path: Path, name: str, splits: list[str], info: dict | None = None) -> dict:
    """Add or replace `<name>_<split>` entries (and drop a stale `<name>_val`), leaving other entries alone.
    `info`: the file's entries as `read_dataset_info` gave them before anything was written (else read here)."""
    info = read_dataset_info(path) if info is None else dict(info)
    for s in ("train", "val"):
        if s in splits:
            info[f"{name}_{s}"] = dataset_entry(f"{name}_{s}.json")
        else:
            info.pop(f"{name}_{s}", None)
    atomic_write(path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    return info


# ---------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block: `--help` shows that
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m pipelines convert",
                     description="Convert a raw data set into alpaca files + dataset_info.json.")
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(sorted(converters.REGISTRY))}")
    parser.add_argument("--raw", type=Path, required=True,
                        help="the raw file (for cluener: the folder holding train.json and dev.json)")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help=f"default: {DATA_DIR}")
    parser.add_argument("--format", default="dict", choices=converters.CLUENER_FORMATS,
                        help="cluener answer form (default: dict)")
    parser.add_argument("--on-error", default="fail", choices=("fail", "skip"),
                        help="stop at the first bad row (default) or count and skip bad rows")
    parser.add_argument("--val-size", type=val_size_arg, default=None,
                        help=f"val set: 0 (none; removes an earlier one), a fraction in (0, 1) or a whole count >= 1 "
                             f"(default {DEFAULT_VAL_SIZE}; not for cluener)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED})")
    parser.add_argument("--dedupe", action="store_true",
                        help="drop exact repeats (counted as skipped); a text repeated with another label stays an "
                             "error (or is skipped with `--on-error skip`)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = convert(args.name, args.raw, args.out_dir, fmt=args.format, on_error=args.on_error,
                         val_size=args.val_size, seed=args.seed, dedupe=args.dedupe)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
