"""`pipelines.data.convert` end to end: the bundled samples, bad input, the real data sets, LLaMA-Factory's loader."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from realdata import real, shared

from pipelines.common.paths import RAW_DIR, ROOT
from pipelines.data import convert, samples
from pipelines.data.converters import CLUENER_TYPES

GOOD1 = '{"text": "张三在北京", "label": {"name": {"张三": [[0, 1]]}, "address": {"北京": [[3, 4]]}}}'
GOOD2 = '{"text": "今天天气晴朗", "label": {}}'
DEV = '{"text": "李四来了", "label": {"name": {"李四": [[0, 1]]}}}'
QA1 = '{"instruction": "为什么鱼不能爬树？", "input": "", "output": "因为鱼没有腿。"}'
QA2 = '{"instruction": "一斤棉花和一斤铁哪个重？", "input": "", "output": "一样重。"}'
QA3 = '{"instruction": "月亮会吃饭吗？", "input": "", "output": "不会。"}'


def lines(*rows: str) -> bytes:
    return "".join(r + "\n" for r in rows).encode()


def json_list(*rows: str) -> bytes:
    return ("[\n" + ",\n".join(rows) + "\n]\n").encode()


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = convert.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def raw_for(tmp_path: Path, source: str, content: bytes) -> tuple[Path, Path]:
    """(--raw argument, the file holding `content`)."""
    if source == "cluener":
        folder = tmp_path / "cluener"
        folder.mkdir()
        (folder / "train.json").write_bytes(content)
        (folder / "dev.json").write_bytes(lines(DEV))
        return folder, folder / "train.json"
    path = tmp_path / f"{source}.json"
    path.write_bytes(content)
    return path, path


def counts(summary: str) -> tuple[int, int, int]:
    m = re.search(r"read (\d+), written (\d+) .*, skipped (\d+)", summary)
    assert m, summary
    return int(m[1]), int(m[2]), int(m[3])


# --------------------------------------------------------------------------------------------- bad input

# (name, source, raw bytes, line named, words in the message, skip reason or None for a file-level error)
BAD_INPUT = [
    ("malformed JSON line", "cluener", lines(GOOD1, '{"text": "王五", ', GOOD2), 2, "is not valid JSON",
     "malformed JSON"),
    ("missing text", "cluener", lines(GOOD1, '{"label": {}}', GOOD2), 2, "`text` is missing", "missing text"),
    ("missing label", "cluener", lines(GOOD1, GOOD2, '{"text": "王五"}'), 3, "`label` is missing", "missing label"),
    ("span out of range", "cluener", lines(GOOD1, '{"text": "王五", "label": {"name": {"王五": [[0, 5]]}}}'), 2,
     "outside a text of 2 characters", "span out of range"),
    ("span text differs", "cluener", lines('{"text": "王五来了", "label": {"name": {"王五": [[1, 2]]}}}', GOOD1), 1,
     "covers `五来`", "span text mismatch"),
    ("unknown entity type", "cluener", lines(GOOD1, '{"text": "王五", "label": {"person": {"王五": [[0, 1]]}}}'), 2,
     "unknown entity type `person`", "unknown type"),
    ("malformed span", "cluener", lines(GOOD1, '{"text": "王五", "label": {"name": {"王五": [0, 1]}}}'), 2,
     "not [start, end]", "bad span"),
    ("empty file", "cluener", b"", 1, "the file is empty", None),
    ("blank file", "ruozhiba", b"\n \n", 1, "the file is empty", None),
    ("UTF-8 BOM", "cluener", b"\xef\xbb\xbf" + lines(GOOD1, GOOD2), 1, "byte-order mark", None),
    ("CRLF endings", "cluener", lines(GOOD1, GOOD2).replace(b"\n", b"\r\n"), 1, "CRLF", None),
    ("CRLF later", "ruozhiba", json_list(QA1, QA2).replace(b"},\n", b"},\r\n"), 2, "CRLF", None),
    ("invalid UTF-8 line", "cluener", lines(GOOD1, GOOD2) + b'{"text": "\xff\xfe"}\n', 3, "is not valid UTF-8",
     "invalid UTF-8"),
    ("invalid UTF-8 in a list", "ruozhiba", json_list(QA1, QA2).replace("一样".encode(), b"\xc3("), 3,
     "is not valid UTF-8", None),
    ("ruozhiba top level is an object", "ruozhiba", QA1.encode() + b"\n", 1, "the top level is a JSON object", None),
    ("ruozhiba top level is a string", "ruozhiba", b'\n"hello"\n', 2, "the top level is a string", None),
    ("ruozhiba malformed list", "ruozhiba", json_list(QA1, '{"instruction": "问"', QA3), 4, "is not valid JSON",
     None),
    ("text after the list", "ruozhiba", json_list(QA1) + b"{}\n", 4, "text after the closing", None),
    ("duplicate record", "ruozhiba", json_list(QA1, QA2, QA3, QA2), 5, "repeats line 3", "duplicate"),
    ("duplicate CLUENER text", "cluener", lines(GOOD1, GOOD2, GOOD1), 3, "repeats line 1", "duplicate"),
    ("empty output", "ruozhiba", json_list(QA1, QA2.replace("一样重。", ""), QA3), 3, "`output` is empty",
     "empty output"),
    ("missing instruction", "alpaca", lines(QA1, '{"input": "", "output": "答"}', QA2), 2,
     "`instruction` is missing", "missing instruction"),
    ("list element not an object", "huanhuan", json_list(QA1, '"问答"', QA2), 3, "not an object", "not an object"),
    ("label not a candidate", "classification",
     lines('{"text": "球队夺冠", "category": ["体育", "财经"], "output": "体育"}',
           '{"text": "股市大涨", "category": ["体育", "军事"], "output": "财经"}'), 2, "`财经` is not among", "label not in category"),
]
assert len(BAD_INPUT) >= 12


@pytest.mark.parametrize("name, source, content, line, words, reason", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_fails_in_one_sentence(tmp_path, capsys, name, source, content, line, words, reason):
    raw, path = raw_for(tmp_path, source, content)
    rc, out, err = run(capsys, source, "--raw", raw, "--out-dir", tmp_path / "out")
    assert rc != 0
    assert out == ""
    message = err.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"error: `{path}` line {line}: ")
    assert words in message
    assert message.endswith(".")
    assert not (tmp_path / "out" / "dataset_info.json").exists()  # nothing written on failure


@pytest.mark.parametrize("name, source, content, line, words, reason", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_with_skip(tmp_path, capsys, name, source, content, line, words, reason):
    raw, path = raw_for(tmp_path, source, content)
    rc, out, err = run(capsys, source, "--raw", raw, "--out-dir", tmp_path / "out", "--on-error", "skip",
                       *(["--val-size", "0"] if source != "cluener" else []))
    if reason is None:  # a file-level problem: skipping rows cannot help
        assert rc != 0 and err.startswith(f"error: `{path}` line {line}: ") and words in err
        return
    assert rc == 0, err
    read, written, skipped = counts(out)
    assert (skipped, read) == (1, written + skipped)
    assert f"skipped 1 ({reason}: 1)" in out
    files = [json.loads(p.read_text()) for p in (tmp_path / "out").glob(f"{source}_*.json")]
    assert sum(map(len, files)) == written


def test_cli_process_exits_nonzero_without_traceback(tmp_path):
    raw, path = raw_for(tmp_path, "cluener", lines(GOOD1, '{"text": "王五"}'))
    proc = subprocess.run([sys.executable, "-m", "pipelines.data.convert", "cluener", "--raw", str(raw),
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: `{path}` line 2: the key `label` is missing; fix the row or rerun with "
                           "`--on-error skip` to count and skip such rows.\n")


@pytest.mark.parametrize("argv, words", [
    (["cluner", "--raw", "x"], "unknown converter `cluner`; did you mean `cluener`?"),
    (["cluener", "--raw", "missing_dir"], "`--raw` must be a folder holding `train.json` and `dev.json`"),
    (["ruozhiba", "--raw", "missing.json"], "`missing.json` is not a file"),
    (["cluener", "--raw", "data/raw/cluener_sample", "--val-size", "10"], "`--val-size` does not apply"),
    (["ruozhiba", "--raw", "data/raw/ruozhiba_sample.json", "--val-size", "300"], "leaves no training records"),
])
def test_bad_options_fail_in_one_sentence(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(ROOT)
    rc, _, err = run(capsys, *argv, "--out-dir", tmp_path)
    assert rc == 1 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_empty_list_is_an_error(tmp_path, capsys):
    raw, path = raw_for(tmp_path, "ruozhiba", b"[ ]\n")
    rc, _, err = run(capsys, "ruozhiba", "--raw", raw, "--out-dir", tmp_path / "out")
    assert rc == 1 and err.startswith(f"error: `{path}` line 1: the file holds no records")


def test_dev_repeating_train_names_both_files(tmp_path, capsys):
    raw, path = raw_for(tmp_path, "cluener", lines(GOOD1, DEV))
    rc, _, err = run(capsys, "cluener", "--raw", raw, "--out-dir", tmp_path / "out")
    assert rc == 1 and err.startswith(f"error: `{raw / 'dev.json'}` line 1: the row repeats `{path}` line 2; ")


def test_all_rows_skipped_is_an_error(tmp_path, capsys):
    raw, _ = raw_for(tmp_path, "ruozhiba", json_list('"a"', '"b"'))
    rc, _, err = run(capsys, "ruozhiba", "--raw", raw, "--out-dir", tmp_path / "out", "--on-error", "skip")
    assert rc == 1 and "no train records left out of 2 read (2 skipped)" in err


# ------------------------------------------------------------------------------------------ the samples


def test_samples_regenerate_byte_identical():
    rendered = samples.render()
    assert len(rendered) == 5
    for rel, text in rendered.items():
        assert (RAW_DIR / rel).read_bytes() == text.encode("utf-8"), f"rerun `python -m pipelines samples`: {rel}"


def test_cluener_sample_looks_like_cluener():
    rows = [json.loads(line) for line in (RAW_DIR / "cluener_sample" / "train.json").read_text().splitlines()]
    assert len(rows) >= 1000
    types = {t for r in rows for t in r["label"]}
    assert types == set(CLUENER_TYPES)
    n_entities = [sum(len(e) for e in r["label"].values()) for r in rows]
    assert min(n_entities) == 0 and max(n_entities) == 4
    assert any(len(spans) > 1 for r in rows for e in r["label"].values() for spans in e.values())
    assert max(len(r["text"]) for r in rows) <= 50


def test_make_data_converts_every_sample(tmp_path, capsys):
    for name, raw in [("cluener", RAW_DIR / "cluener_sample"), ("ruozhiba", RAW_DIR / "ruozhiba_sample.json"),
                      ("huanhuan", RAW_DIR / "huanhuan_sample.json"),
                      ("classification", RAW_DIR / "classification_sample.json")]:
        rc, out, err = run(capsys, name, "--raw", raw, "--out-dir", tmp_path)
        assert rc == 0, err
        read, written, skipped = counts(out)
        assert read == written and skipped == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert sorted(info) == sorted(f"{n}_{s}" for n in ("cluener", "ruozhiba", "huanhuan", "classification")
                                  for s in ("train", "val"))
    for key, entry in info.items():
        assert entry == {"file_name": f"{key}.json", "formatting": "alpaca",
                         "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                     "system": "system"}}
        records = json.loads((tmp_path / entry["file_name"]).read_text())
        assert all(set(r) == {"id", "instruction", "input", "output", "system"} for r in records)
        assert all(isinstance(v, str) for r in records for v in r.values())
    ids = [r["id"] for e in info.values() for r in json.loads((tmp_path / e["file_name"]).read_text())]
    assert len(ids) == len(set(ids))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    val = json.loads((tmp_path / "cluener_val.json").read_text())
    assert len(val) == 200 and val[0]["id"] == "cluener-dev-00000"


def test_dataset_info_keeps_other_entries_and_drops_a_stale_val(tmp_path, capsys):
    other = {"mine": {"file_name": "mine.json"}, "ruozhiba_extra": {"file_name": "x.json"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(other))
    raw = RAW_DIR / "ruozhiba_sample.json"
    assert run(capsys, "ruozhiba", "--raw", raw, "--out-dir", tmp_path)[0] == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert list(info) == ["mine", "ruozhiba_extra", "ruozhiba_train", "ruozhiba_val"]
    assert run(capsys, "ruozhiba", "--raw", raw, "--out-dir", tmp_path, "--val-size", "0")[0] == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert list(info) == ["mine", "ruozhiba_extra", "ruozhiba_train"]
    assert len(json.loads((tmp_path / "ruozhiba_train.json").read_text())) == 300


def test_split_is_seeded_and_sized(tmp_path, capsys):
    raw = RAW_DIR / "ruozhiba_sample.json"

    def val_ids(*extra):
        out = tmp_path / "_".join(extra)
        assert run(capsys, "ruozhiba", "--raw", raw, "--out-dir", out, *extra)[0] == 0
        train = [r["id"] for r in json.loads((out / "ruozhiba_train.json").read_text())]
        val = [r["id"] for r in json.loads((out / "ruozhiba_val.json").read_text())]
        assert not set(train) & set(val) and train == sorted(train) and val == sorted(val)
        return val

    assert val_ids("--seed", "1") == val_ids("--seed", "1", "--val-size", "0.1")
    assert val_ids("--seed", "1") != val_ids("--seed", "2")
    assert len(val_ids("--val-size", "17")) == 17
    assert len(val_ids("--val-size", "0.2")) == 60


def test_huanhuan_duplicates_kept_or_deduped(tmp_path, capsys):
    raw, _ = raw_for(tmp_path, "huanhuan", json_list(QA1, QA2, QA1, QA3))
    rc, out, _ = run(capsys, "huanhuan", "--raw", raw, "--out-dir", tmp_path / "a", "--val-size", "0")
    assert rc == 0 and counts(out) == (4, 4, 0)
    rc, out, _ = run(capsys, "huanhuan", "--raw", raw, "--out-dir", tmp_path / "b", "--val-size", "0", "--dedupe")
    assert rc == 0 and counts(out) == (4, 3, 1) and "(duplicate: 1)" in out


def test_cluener_list_format(tmp_path, capsys):
    rc, _, _ = run(capsys, "cluener", "--raw", RAW_DIR / "cluener_sample", "--out-dir", tmp_path, "--format", "list")
    assert rc == 0
    outputs = [json.loads(r["output"]) for r in json.loads((tmp_path / "cluener_train.json").read_text())]
    assert all(isinstance(o, list) for o in outputs) and [] in outputs


# ------------------------------------------------------------------------------------------- real data


def entity_set(output: str) -> set[tuple[str, str]]:
    value = json.loads(output)
    if isinstance(value, dict):
        return {(t, e) for t, es in value.items() for e in es}
    return {(item["label"], item["text"]) for item in value}


@real
@pytest.mark.parametrize("fmt", ["dict", "list"])
def test_real_cluener_converts_every_record_with_its_entities(tmp_path, capsys, fmt):
    raw = shared("cluener2020")
    rc, out, err = run(capsys, "cluener", "--raw", raw, "--out-dir", tmp_path, "--format", fmt)
    assert rc == 0, err
    assert counts(out) == (10748 + 1343, 10748 + 1343, 0)
    for split, source, n in (("train", "train.json", 10748), ("val", "dev.json", 1343)):
        records = json.loads((tmp_path / f"cluener_{split}.json").read_text())
        raws = [json.loads(line) for line in (raw / source).read_text(encoding="utf-8").splitlines()]
        assert len(records) == len(raws) == n
        for record, row in zip(records, raws):
            assert record["input"] == row["text"]
            expected = {(t, e) for t, es in row["label"].items() for e in es}
            assert entity_set(record["output"]) == expected
            assert len(json.loads(record["output"]) if fmt == "list" else
                       [e for es in json.loads(record["output"]).values() for e in es]) == len(expected)


@real
@pytest.mark.parametrize("file", ["ruozhiba_qa2449_gpt4o.json", "ruozhiba_qa2449_gpt4t.json"])
def test_real_ruozhiba_converts_all_2449(tmp_path, capsys, file):
    rc, out, err = run(capsys, "ruozhiba", "--raw", shared("ruozhiba_gpt4", file), "--out-dir", tmp_path)
    assert rc == 0, err
    assert counts(out) == (2449, 2449, 0)
    train = json.loads((tmp_path / "ruozhiba_train.json").read_text())
    val = json.loads((tmp_path / "ruozhiba_val.json").read_text())
    assert (len(train), len(val)) == (2204, 245)


@real
def test_real_huanhuan_dedupe_counts(tmp_path, capsys):
    raw = shared("huanhuan", "huanhuan.json")
    rc, out, err = run(capsys, "huanhuan", "--raw", raw, "--out-dir", tmp_path, "--dedupe")
    assert rc == 0, err
    assert counts(out) == (3729, 3617, 112)


# ------------------------------------------------------------------------------- LLaMA-Factory's loader


def load_with_llamafactory(name: str, dataset_dir: Path, model: Path, out: Path):
    """The data set as LLaMA-Factory's SFT pipeline builds it: its argument parser, loader and template."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(dict(
        model_name_or_path=str(model), stage="sft", do_train=True, finetuning_type="lora", dataset=name,
        dataset_dir=str(dataset_dir), template="qwen", cutoff_len=4096, output_dir=str(out), report_to="none"))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    return module["train_dataset"], tokenizer_module["tokenizer"]


def test_every_dataset_info_entry_loads_in_llamafactory(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "data"
    for name, raw in [("cluener", RAW_DIR / "cluener_sample"), ("ruozhiba", RAW_DIR / "ruozhiba_sample.json"),
                      ("huanhuan", RAW_DIR / "huanhuan_sample.json"),
                      ("classification", RAW_DIR / "classification_sample.json")]:
        assert run(capsys, name, "--raw", raw, "--out-dir", data)[0] == 0
    info = json.loads((data / "dataset_info.json").read_text())
    assert len(info) == 8
    for name, entry in info.items():
        records = json.loads((data / entry["file_name"]).read_text())
        dataset, tokenizer = load_with_llamafactory(name, data, tiny_model_dir, tmp_path / "out")
        assert len(dataset) == len(records), name
        text = tokenizer.decode(dataset[0]["input_ids"])
        first = records[0]
        for part in (first["system"], first["instruction"], first["input"], first["output"]):
            assert part in text, (name, part)  # every column reaches the rendered sample
        user = first["instruction"] + ("\n" + first["input"] if first["input"] else "")
        assert f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{first['output']}<|im_end|>" in text
