"""`pipelines.train.check` — every config of conf/ passes; each bad config gives its one sentence, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.common.lora import servable_rank
from pipelines.common.paths import ROOT
from pipelines.train import check

CONFIGS = sorted(p.name for p in (ROOT / "conf").glob("*.yaml"))
TINY = "conf/tiny_lora_cluener.yaml"


def test_there_are_configs():
    assert {"tiny_lora_cluener.yaml", "tiny_lora_ruozhiba.yaml", "qwen2.5-0.5b-instruct_lora_cluener.yaml",
            "qwen2.5-7b-instruct_lora_cluener.yaml", "qwen2.5-0.5b-instruct_lora_ruozhiba.yaml",
            "qwen2.5-0.5b-instruct_full_cluener.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_passes_the_check(name, monkeypatch, converted_data_dir, tiny_base_dir):
    # The Qwen2.5 configs name hub ids that are not available here. The parser check needs neither their
    # weights nor the hub (LLaMA-Factory's parser only reads the arguments; HF_HUB_OFFLINE proves it), the
    # template check infers the family from the name (qwen2.5 -> qwen2 -> `qwen`), and the cutoff_len check,
    # which needs the tokenizer, is skipped with a note. bf16 is validated as false on a machine without GPU.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = ROOT / "conf" / name
    text = path.read_text(encoding="utf-8")
    header = text.split("###")[0]
    assert text.startswith("# ") and "#   make " in header, "open with the make command"
    assert "ARGS=" in header, "the header gives one override example"
    for section in ("### model", "### method", "### dataset", "### output", "### train"):
        assert section in text
    cfg = check.load_config(path)
    overrides = [f"dataset_dir={converted_data_dir}"] if cfg.get("dataset_dir") == "data" else []
    report = check.check_config(path, overrides)
    assert report.ok, report.render()
    hub = not (ROOT / cfg["model_name_or_path"]).exists()
    if hub:
        assert any("not available locally" in n for n in report.notes)
    else:
        assert not report.warnings, report.render()  # the tiny configs' cutoff_len covers their data's p99


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_passes_the_parser_and_notes_a_cpu_without_native_bf16(native, monkeypatch, converted_data_dir,
                                                                         tiny_base_dir):
    # The tiny configs ask for bf16 with use_cpu: LLaMA-Factory's parser (transformers) accepts that as CPU
    # autocast, so it is parsed as written; where the CPU has no native bf16 a note says make train uses fp32.
    monkeypatch.setattr(check, "cpu_native_bf16", lambda: native)
    report = check.check_config(ROOT / TINY, [f"dataset_dir={converted_data_dir}"], gpu=False)
    assert report.ok, report.render()
    assert report.merged["bf16"] is True and report.merged["use_cpu"] is True
    assert not any("validated as false" in n for n in report.notes)
    assert any("no native bf16" in n for n in report.notes) is not native
    # without use_cpu, bf16 still needs a GPU: validated as false with its note
    gpu_cfg = check.check_config(ROOT / TINY, [f"dataset_dir={converted_data_dir}", "use_cpu=false"], gpu=False)
    assert gpu_cfg.ok and any("validated as false" in n for n in gpu_cfg.notes)


def test_configs_track_nothing_unless_asked_and_the_tiny_ones_save_every_epoch():
    """`report_to: none` (TRACKER= chooses a tracker at launch); the tiny configs keep a checkpoint and an eval loss
    per epoch for `make curve`, every one of them."""
    for name in CONFIGS:
        cfg = check.load_config(ROOT / "conf" / name)
        assert cfg["report_to"] == "none", name
        assert "pip install swanlab" not in (ROOT / "conf" / name).read_text(encoding="utf-8")
        if name.startswith("tiny_lora"):
            assert cfg["save_strategy"] == "epoch" and cfg["eval_strategy"] == "epoch" and cfg.get("eval_dataset")
            assert cfg["save_total_limit"] >= cfg["num_train_epochs"]


def test_deepspeed_configs():
    for stage, name in ((2, "ds_z2_config.json"), (3, "ds_z3_config.json")):
        ds = json.loads((ROOT / "conf" / "deepspeed" / name).read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"]["enabled"] == "auto"


@pytest.fixture(scope="module")
def missing_file_dir(tmp_path_factory) -> Path:
    """A dataset_dir whose dataset_info.json names a file that is not there."""
    d = tmp_path_factory.mktemp("missing-file")
    (d / "dataset_info.json").write_text(json.dumps({"cluener_train": {"file_name": "cluener_train.json"},
                                                     "cluener_val": {"file_name": "cluener_val.json"}}))
    (d / "cluener_val.json").write_text("[]")
    return d


BAD = [
    # (name, overrides, the one sentence expected)
    ("unknown key", ["lora_rnk=8"],
     "`lora_rnk` is not a LLaMA-Factory argument; rename it (closest: `lora_rank`) or remove it."),
    ("missing dataset", ["dataset=cluener_trian"],
     "`dataset` names `cluener_trian`, which is not in `{data}/dataset_info.json`; fix the name (closest: "
     "`cluener_train`, `cluener_val`) or run `make data`"),
    ("missing file", ["dataset_dir={missing}"],
     "`{missing}/cluener_train.json` (the file of `cluener_train`) is missing; run `make data`."),
    ("modules_to_save", ["modules_to_save=lm_head"],
     "`modules_to_save` is PEFT's name, not a LLaMA-Factory key (LLaMA-Factory calls it `additional_target`), "
     "and vLLM cannot serve adapters with fully trained extra modules; remove it."),
    ("additional_target", ["additional_target=embed_tokens"],
     "`additional_target: embed_tokens` trains extra modules in full (PEFT `modules_to_save`), which vLLM cannot "
     "serve; remove it."),
    ("rank 1024", ["lora_rank=1024", "lora_alpha=2048"],
     "`lora_rank: 1024` is above vLLM's largest `--max-lora-rank` (512); use at most 512, e.g. one of 8, 16, 32, "
     "64, 128, 256."),
    ("wrong template", ["template=llama3"],
     "`template: llama3` does not fit `{model}` (model_type `qwen2` from its `config.json`); use `template: qwen`."),
    ("unknown template", ["template=qwn"],
     "`template: qwn` is not a LLaMA-Factory template; use one of `llamafactory.data.template` (closest: `qwen`"),
    ("dora", ["use_dora=true"], "`use_dora: true` gives a DoRA adapter, which vLLM cannot serve; remove it."),
    ("resize_vocab", ["resize_vocab=true"],
     "`resize_vocab: true` changes the embedding size, which a vLLM LoRA adapter cannot carry; remove it"),
    ("deepspeed file", ["deepspeed=conf/deepspeed/ds_z9.json"],
     "`deepspeed: conf/deepspeed/ds_z9.json` names no file; use `conf/deepspeed/ds_z2_config.json` or "
     "`conf/deepspeed/ds_z3_config.json`."),
    ("parser", ["stage=sft", "do_predict=true"],
     "LLaMA-Factory's argument parser rejected the config: Please enable `predict_with_generate` to save model "
     "predictions; fix that key."),
    ("wrong type", ["lora_rank=abc"],
     "`lora_rank: abc` is not a whole number, as LLaMA-Factory expects; fix the value."),
    ("bad choice", ["finetuning_type=qlora"],
     "`finetuning_type: qlora` is not one of `lora`, `oft`, `freeze`, `full`, as LLaMA-Factory expects; "
     "fix the value."),
    ("bad override", ["lora_rank"], "override `lora_rank` is not `key=value`; write it as e.g. `num_train_epochs=2`."),
]


@pytest.mark.parametrize("name, overrides, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_gives_one_sentence(name, overrides, expected, capsys, converted_data_dir, tiny_base_dir,
                                       missing_file_dir):
    fill = {"data": converted_data_dir, "missing": missing_file_dir, "model": tiny_base_dir}
    overrides = [o.format(**fill) for o in overrides]
    rc = check.main([TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}", *overrides,
                     "--no-lengths"])
    out, err = capsys.readouterr()
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("  error: ")]
    assert len(errors) == 1, err
    assert expected.format(**fill) in errors[0]
    assert "Traceback" not in out + err


def test_all_problems_at_once_via_the_command_line(converted_data_dir, tiny_base_dir):
    """The real `python -m pipelines check` process: every problem listed, exit 1, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train.check", TINY, f"model_name_or_path={tiny_base_dir}",
         f"dataset_dir={converted_data_dir}", "lora_rnk=8", "dataset=cluener_trian", "modules_to_save=lm_head",
         "lora_rank=1024", "template=llama3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("  error: ")]
    assert len(errors) == 5, proc.stderr
    assert proc.stderr.startswith(f"check {TINY}: 5 problems")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_short_cutoff_is_a_warning_not_an_error(capsys, converted_data_dir, tiny_base_dir):
    rc = check.main([TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                     "cutoff_len=32", "max_samples=100"])  # the prompt alone is longer than 32 tokens
    out = capsys.readouterr().out
    assert rc == 0
    assert "warning: `cutoff_len: 32` is below the p99 token length of `cluener_train` (" in out
    assert "so 100 of 100 samples are truncated; raise it to " in out
    suggested = int(out.split("raise it to ")[1].split()[0])
    assert suggested % 32 == 0 and suggested > 32


def test_hub_model_family_from_the_name():
    assert check.model_family("Qwen/Qwen2.5-7B-Instruct") == ("qwen2", "name")
    assert check.model_family("Qwen/Qwen3-8B") == ("qwen3", "name")
    assert check.model_family("someone/unknown-model") == (None, "name")
    problems, _ = check.check_template({"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "template": "llama3"},
                                       check.llamafactory_templates())
    assert problems == ["`template: llama3` does not fit `Qwen/Qwen2.5-0.5B-Instruct` (model_type `qwen2` from its "
                        "name); use `template: qwen`."]


@pytest.mark.parametrize("rank, flag", [(1, 1), (4, 8), (8, 8), (64, 64), (100, 128), (300, 320), (512, 512),
                                        (513, None)])
def test_servable_rank(rank, flag):
    assert servable_rank(rank) == flag


def test_unreadable_configs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: [unclosed\n")
    for argv, expected in (([str(tmp_path / "nope.yaml")], f"`{tmp_path / 'nope.yaml'}` not found; pass a file"),
                           ([str(bad)], f"`{bad}` is not valid YAML (")):
        assert check.main(argv) == 1
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("override, expected", [
    ("lora_rank=-8", "`lora_rank: -8` must be a whole number of at least 1"),
    ("lora_rank=0", "`lora_rank: 0` must be a whole number of at least 1"),
    ("max_samples=0", "`max_samples: 0` must be a whole number of at least 1"),
    ("learning_rate=0.0", "`learning_rate: 0.0` must be a finite number above 0"),
    ("num_train_epochs=-1", "`num_train_epochs: -1` must be a finite number above 0"),
])
def test_numbers_that_train_nothing_are_refused(override, expected, converted_data_dir, tiny_base_dir):
    """LLaMA-Factory's parser takes them and training fails (or trains nothing) later (issue 24, item 13)."""
    report = check.check_config(ROOT / TINY, [f"dataset_dir={converted_data_dir}", override],
                                measure_lengths=False, gpu=False)
    assert not report.ok and len(report.problems) == 1, report.render()
    assert report.problems[0].startswith(expected), report.problems
