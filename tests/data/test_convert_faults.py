"""The fault table of conversion (`make data`): what it does when its input is wrong, kept as tests (the
rows' shape and helpers: tests/faults.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.common.paths import RAW_DIR
from pipelines.data import convert

needs_vllm = pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm


from faults import one_line, pipelines, snapshot

# ------------------------------------------------------------------------------------------------- convert

GOOD1 = '{"text": "张三在北京", "label": {"name": {"张三": [[0, 1]]}, "address": {"北京": [[3, 4]]}}}'
OTHER1 = '{"text": "张三在北京", "label": {"address": {"北京": [[3, 4]]}}}'  # GOOD1's text, another label
GOOD2 = '{"text": "今天天气晴朗", "label": {}}'
DEV = '{"text": "李四来了", "label": {"name": {"李四": [[0, 1]]}}}'
CLS1 = '{"text": "球队夺冠", "category": ["体育", "财经"], "output": "体育"}'
CLS2 = '{"text": "股市大涨", "category": ["体育", "财经"], "output": "财经"}'
CLS1_OTHER = '{"text": "球队夺冠", "category": ["体育", "财经"], "output": "财经"}'
RUOZHIBA = RAW_DIR / "ruozhiba_sample.json"


def cluener_raw(tmp: Path, *train: str, encoding: str = "utf-8") -> Path:
    folder = tmp / "raw"
    folder.mkdir(exist_ok=True)
    (folder / "train.json").write_bytes("".join(r + "\n" for r in train).encode(encoding))
    (folder / "dev.json").write_text(DEV + "\n", encoding="utf-8")
    return folder


def file_raw(tmp: Path, name: str, *rows: str) -> Path:
    path = tmp / name
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def corrupt_info(tmp: Path) -> list:
    (tmp / "out" / "dataset_info.json").write_text('{\n  "cluener_train": {"file_name": "cluener_train.json"},\n'
                                                   '  "mine": {"file_name": \n}\n')
    return ["ruozhiba", "--raw", RUOZHIBA]


def out_dir_is_a_file(tmp: Path) -> list:
    (tmp / "a_file").write_text("keep me\n")
    return ["ruozhiba", "--raw", RUOZHIBA, "--out-dir", tmp / "a_file"]


UNCHANGED = "the output folder is left byte for byte as it was"
ADDS_UP = "read = written + skipped, and the files hold the records written"
VAL_REMOVED = "the old val file and its dataset_info entry are gone"

CONVERT_FAULTS = [
    # (name, fault: tmp -> `convert` argv, exit code, the one line (regex), outcome)
    ("bad JSON line", lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, '{"text": "王五", ', GOOD2)], 1,
     r"error: `.*/raw/train\.json` line 2: the line is not valid JSON \(.*\); fix the row or rerun with "
     r"`--on-error skip` to count and skip such rows\.", UNCHANGED),
    ("missing file", lambda t: ["ruozhiba", "--raw", t / "nowhere.json"], 1,
     r"error: `.*/nowhere\.json` is not a file; `--raw` must be the raw `ruozhiba` file\.", UNCHANGED),
    ("UTF-8 byte-order mark", lambda t: ["ruozhiba", "--raw", file_raw(t, "bom.json", "\ufeff[" + json.dumps(
        {"instruction": "问", "output": "答"}, ensure_ascii=False) + "]")], 1,
     r"error: `.*bom\.json` line 1: the file starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM\.",
     UNCHANGED),
    ("bad rows with --on-error skip",
     lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, '{"text": "王五", ', GOOD2, '{"label": {}}'),
                "--on-error", "skip"], 0,
     r"cluener: read 5, written 3 \(train 2 → .*, val 1 → .*\), skipped 2 \(malformed JSON: 1, missing text: 1\)",
     ADDS_UP),
    ("--val-size 0 after a run with a val set", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size", "0"], 0,
     r"ruozhiba: read 300, written 300 \(train 300 → .*\), skipped 0; removed the stale .*/ruozhiba_val\.json and "
     r"its dataset_info entry \(no val set this time, its rows may be in train now\)", VAL_REMOVED),
    ("--val-size nan", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size", "nan"], 2,
     r"python -m pipelines convert: error: argument --val-size: `--val-size nan` is not a finite number; use 0 "
     r"\(no val set\), a fraction in \(0, 1\) or a whole count such as 200\.", UNCHANGED),
    ("--val-size inf", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size", "inf"], 2,
     r".*argument --val-size: `--val-size inf` is not a finite number; .*", UNCHANGED),
    ("--val-size negative", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size=-0.1"], 2,
     r".*argument --val-size: `--val-size -0\.1` is negative; use 0 .*", UNCHANGED),
    ("--val-size 1.5", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size", "1.5"], 2,
     r".*argument --val-size: `--val-size 1\.5` is neither a fraction in \(0, 1\) nor a whole count; .*", UNCHANGED),
    ("--val-size as many as the records", lambda t: ["ruozhiba", "--raw", RUOZHIBA, "--val-size", "300"], 1,
     r"error: `--val-size 300` leaves no training records out of 300; use a smaller value\.", UNCHANGED),
    ("corrupt dataset_info.json", corrupt_info, 1,
     r"error: `.*/out/dataset_info\.json` line 4: not valid JSON \(Expecting value\); delete it and rerun "
     r"`make data`\.", UNCHANGED),
    ("--out-dir is a file", out_dir_is_a_file, 1,
     r"error: `--out-dir .*/a_file` is a file, not a folder; point it at a folder\.", UNCHANGED),
    ("GBK-encoded input", lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, GOOD2, encoding="gbk")], 1,
     r"error: `.*/raw/train\.json` line 1 is not valid UTF-8; it looks like GBK \(decoded as GBK it reads "
     r"`\{\"text\": \"张三在北京\".*`\): convert it with `iconv -f GBK -t UTF-8 .*/raw/train\.json > "
     r".*/raw/train\.utf8\.json` and point `--raw` at the UTF-8 file\.", UNCHANGED),
    ("same text, another label", lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, GOOD2, OTHER1)], 1,
     r"error: `.*/raw/train\.json` line 3: the text of line 1 comes again with another label \(`--dedupe` drops "
     r"exact repeats only\); fix the row or rerun with `--on-error skip` to count and skip such rows\.", UNCHANGED),
    ("same text, another label, with --dedupe",
     lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, GOOD2, OTHER1), "--dedupe"], 1,
     r"error: `.*/raw/train\.json` line 3: the text of line 1 comes again with another label .*", UNCHANGED),
    ("same text, another label, with --on-error skip",
     lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, GOOD2, OTHER1, GOOD1), "--on-error", "skip"], 0,
     r"cluener: read 5, written 2 \(train 1 → .*, val 1 → .*\), skipped 3 \(conflict: 3\)", ADDS_UP),
    ("exact repeat with --dedupe", lambda t: ["cluener", "--raw", cluener_raw(t, GOOD1, GOOD2, GOOD1), "--dedupe"], 0,
     r"cluener: read 4, written 3 \(train 2 → .*, val 1 → .*\), skipped 1 \(duplicate: 1\)", ADDS_UP),
    ("classification: same text, another label",
     lambda t: ["classification", "--raw", file_raw(t, "cls.json", CLS1, CLS2, CLS1_OTHER), "--val-size", "0"], 1,
     r"error: `.*/cls\.json` line 3: the text of line 1 comes again with another label .*", UNCHANGED),
]


def earlier_run(tmp: Path) -> Path:
    """An output folder as an earlier, good `make data` left it: cluener (with val) and ruozhiba (with val)."""
    out = tmp / "out"
    good = tmp / "earlier"
    good.mkdir()
    (good / "train.json").write_text(GOOD1 + "\n" + GOOD2 + "\n", encoding="utf-8")
    (good / "dev.json").write_text(DEV + "\n", encoding="utf-8")
    convert.convert("cluener", good, out)
    convert.convert("ruozhiba", RUOZHIBA, out)
    return out


def summary_counts(line: str) -> tuple[int, int, int]:
    m = re.search(r"read (\d+), written (\d+) .*, skipped (\d+)", line)
    assert m, line
    return int(m[1]), int(m[2]), int(m[3])


@pytest.mark.parametrize("name, fault, rc, expected, outcome", CONVERT_FAULTS, ids=[f[0] for f in CONVERT_FAULTS])
def test_convert_faults(name, fault, rc, expected, outcome, tmp_path):
    out = earlier_run(tmp_path)
    argv = fault(tmp_path)
    if "--out-dir" not in argv:
        argv += ["--out-dir", out]
    before, others = snapshot(out), snapshot(tmp_path / "a_file") if (tmp_path / "a_file").exists() else None
    run = pipelines("convert", *argv)
    assert run.rc == rc, run.err
    line = one_line(run.out + run.err)
    assert re.fullmatch(expected, line), line
    assert (run.out if rc == 0 else run.err).strip() == line  # the summary on stdout, an error on stderr
    after = snapshot(out)
    assert not [f for f in after if Path(f).name.startswith(".")], after.keys()  # no temp file left
    if outcome == UNCHANGED:
        assert after == before
        if others is not None:
            assert (tmp_path / "a_file").read_text() == "keep me\n"
    elif outcome == ADDS_UP:
        source = argv[0]
        read, written, skipped = summary_counts(line)
        assert read == written + skipped
        files = [json.loads((out / f"{source}_{s}.json").read_text()) for s in ("train", "val")]
        assert sum(map(len, files)) == written
        if "conflict" in line:  # neither label of the conflicting text is kept
            assert all(r["input"] != "张三在北京" for f in files for r in f)
    elif outcome == VAL_REMOVED:
        assert not (out / "ruozhiba_val.json").exists()
        info = json.loads((out / "dataset_info.json").read_text())
        assert "ruozhiba_val" not in info and {"ruozhiba_train", "cluener_train", "cluener_val"} <= set(info)
        assert len(json.loads((out / "ruozhiba_train.json").read_text())) == 300
        assert {k: v for k, v in after.items() if not k.startswith("ruozhiba") and k != "dataset_info.json"} == \
               {k: v for k, v in before.items() if not k.startswith("ruozhiba") and k != "dataset_info.json"}


