"""The CLUENER records the benchmarks use: the real set when it is there, else the bundled sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.common.paths import RAW_DIR, SHARED_DATASETS

REAL_CLUENER = SHARED_DATASETS / "cluener2020"
SAMPLE_CLUENER = RAW_DIR / "cluener_sample"


@dataclass
class BenchData:
    source: str  # "real" or "sample"
    raw: Path
    dir: Path  # holds cluener_train.json, cluener_val.json and dataset_info.json
    train_records: int
    val_records: int

    @property
    def train(self) -> Path:
        return self.dir / "cluener_train.json"

    @property
    def val(self) -> Path:
        return self.dir / "cluener_val.json"


def pick_raw(source: str = "auto") -> tuple[str, Path]:
    """("real", ../shared/datasets/cluener2020) when present (or asked for), else ("sample", data/raw/…)."""
    if source not in ("auto", "real", "sample"):
        raise ValueError(f"unknown data source `{source}`: use auto, real or sample.")
    if source == "sample" or (source == "auto" and not (REAL_CLUENER / "train.json").is_file()):
        return "sample", SAMPLE_CLUENER
    if not (REAL_CLUENER / "train.json").is_file():
        raise FileNotFoundError(f"`{REAL_CLUENER}/train.json` is missing: use `--data sample`.")
    return "real", REAL_CLUENER


def prepare(work: Path, source: str = "auto") -> BenchData:
    """Convert CLUENER with the project's own converter into `work/data` (never into the repository)."""
    from pipelines.data.convert import convert

    kind, raw = pick_raw(source)
    out = work / "data"
    report = convert("cluener", raw, out)
    return BenchData(kind, raw, out, report.written.get("train", 0), report.written.get("val", 0))
