"""`make data`: convert every registered data set that ships a raw sample, or the raw data named instead.

    python -m pipelines data [--out-dir data] [--raw NAME=PATH …]

One `python -m pipelines convert NAME --raw PATH --out-dir DIR` per converter of the registry
(`pipelines.data.converters.REGISTRY`) that has a bundled sample under data/raw/; `--raw cluener=DIR` converts
that folder instead of the sample (how `make data CLUENER_DIR=…` reaches it). Stops at the first failure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common.errors import PipelinesError
from pipelines.common.paths import DATA_DIR, RAW_DIR
from pipelines.data import convert, converters


def plan(raw: dict[str, str], out_dir: Path) -> list[list[str]]:
    """The `convert` argument lists, in the registry's order (pure)."""
    unknown = [n for n in raw if n not in converters.REGISTRY]
    if unknown:
        converters.get(unknown[0])  # one sentence with the closest names
    runs = []
    for name, conv in converters.REGISTRY.items():
        source = raw.get(name) or (str(RAW_DIR / conv.sample) if conv.sample else None)
        if source:
            runs.append([name, "--raw", source, "--out-dir", str(out_dir)])
    return runs


def raw_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"`{text}` is not NAME=PATH, e.g. `cluener=downloads/datasets/cluener2020`")
    return name, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines data", description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DATA_DIR, help=f"default: {DATA_DIR}")
    ap.add_argument("--raw", type=raw_arg, action="append", default=[], metavar="NAME=PATH",
                    help="convert PATH for NAME instead of its bundled sample (repeatable; an empty PATH keeps it)")
    args = ap.parse_args(argv)
    try:
        runs = plan(dict(args.raw), args.out_dir)
    except converters.UnknownConverterError as e:
        raise PipelinesError(f"--raw: {e}") from None
    for run in runs:
        rc = convert.main(run)
        if rc:
            return rc
    return 0
