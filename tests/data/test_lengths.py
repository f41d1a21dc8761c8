"""`pipelines.data.lengths`: exact statistics, one-sentence errors, and real counts through LLaMA-Factory."""

from __future__ import annotations

import json

import pytest

from pipelines.common.paths import RAW_DIR
from pipelines.data import convert, lengths


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert [lengths.nearest_rank_percentile(values, p) for p in (1, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]
    assert lengths.nearest_rank_percentile([7], 99) == 7
    assert lengths.nearest_rank_percentile([5, 1, 3], 50) == 3


def test_suggest_cutoff_rounds_p99_up_to_32():
    assert lengths.suggest_cutoff([100] * 99 + [1000]) == 128
    assert lengths.suggest_cutoff([128]) == 128
    assert lengths.suggest_cutoff([129]) == 160


def test_split_lengths_from_labels():
    assert lengths.split_lengths([-100, -100, -100, 5, 6]) == (3, 2)
    assert lengths.split_lengths([-100, -100]) == (2, 0)


def test_summarize_exact():
    report = lengths.summarize([10, 20, 30, 40], [1, 2, 3, 100])
    assert report == {
        "samples": 4,
        "prompt": {"min": 10, "max": 40, "mean": 25.0, "p95": 40, "p99": 40},
        "response": {"min": 1, "max": 100, "mean": 26.5, "p95": 100, "p99": 100},
        "total": {"min": 11, "max": 140, "mean": 51.5, "p95": 140, "p99": 140},
        "cutoff_len": 160, "truncated_at_cutoff": 0,
    }
    with pytest.raises(lengths.LengthsError, match="no samples"):
        lengths.summarize([], [])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert convert.main(["cluener", "--raw", str(RAW_DIR / "cluener_sample"), "--out-dir", str(out)]) == 0
    assert convert.main(["ruozhiba", "--raw", str(RAW_DIR / "ruozhiba_sample.json"), "--out-dir", str(out)]) == 0
    return out


def test_errors_are_one_sentence(tmp_path, capsys, data_dir, tiny_model_dir):
    cases = [
        (["cluener_val", "--model", str(tiny_model_dir), "--dataset-dir", str(tmp_path)],
         f"error: `{tmp_path / 'dataset_info.json'}` not found; run `make data`"),
        (["cluener_va", "--model", str(tiny_model_dir), "--dataset-dir", str(data_dir)],
         "`; did you mean `cluener_val`"),
        (["cluener_val", "--model", str(tmp_path), "--dataset-dir", str(data_dir)],
         f"error: `{tmp_path}` holds no model"),
        (["cluener_val", "--model", str(tiny_model_dir), "--dataset-dir", str(data_dir), "--template", "nope"],
         "Template nope does not exist"),
    ]
    for argv, words in cases:
        assert lengths.main(argv) == 1
        out, err = capsys.readouterr()
        message = err.strip().splitlines()[-1]
        assert words in message and message.endswith(".") and "Traceback" not in err and out == ""


def test_lengths_through_llamafactory_match_the_chat_template(capsys, data_dir, tiny_model_dir):
    from transformers import AutoTokenizer

    assert lengths.main(["cluener_val", "--model", str(tiny_model_dir), "--dataset-dir", str(data_dir),
                         "--json", "--max-samples", "40"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert report["samples"] == 40 and report["template"] == "qwen"
    assert report["cutoff_len"] % 32 == 0 and report["cutoff_len"] >= report["total"]["p99"]

    # the same counts, independently, from the model's own chat template
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = json.loads((data_dir / "cluener_val.json").read_text())[:40]
    prompt, response = [], []
    for r in records:
        messages = [{"role": "system", "content": r["system"]},
                    {"role": "user", "content": r["instruction"] + "\n" + r["input"]}]
        prompt.append(len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]))
        response.append(len(tok(r["output"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]))
    expected = lengths.summarize(prompt, response)
    assert {k: report[k] for k in expected} == expected


def test_text_report(capsys, data_dir, tiny_model_dir):
    assert lengths.main(["ruozhiba_val", "--model", str(tiny_model_dir), "--dataset-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ruozhiba_val: 30 samples (tokens)\n")
    assert "suggested cutoff_len: " in out and "prompt" in out and "response" in out
