"""The fault table of `make check` and `make train`: what they do when something goes wrong, kept as tests
(the rows' shape and helpers: tests/faults.py); the rows marked slow train for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import train_environ

from pipelines.common.paths import ROOT, TRAIN_MANIFEST

needs_vllm = pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm


from faults import CTRL_C_ABLE, one_line, pipelines, processes_mentioning, wait_for

# --------------------------------------------------------------------------------------------------- check

TINY = "conf/tiny_lora_cluener.yaml"


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write in: a read-only tmpfs for root (whom file modes do not stop), else mode 0555."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        pytest.skip("root, and no read-only tmpfs can be mounted here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


CHECK_FAULTS = [
    # (name, overrides, the one error line)
    ("unknown key", ["lora_rnk=8"],
     "`lora_rnk` is not a LLaMA-Factory argument; rename it (closest: `lora_rank`) or remove it."),
    ("bad template", ["template=qwn"],
     "`template: qwn` is not a LLaMA-Factory template; use one of `llamafactory.data.template` (closest: `qwen`"),
    ("output_dir under a file", ["output_dir=README.md/sub"],
     "`output_dir: README.md/sub` cannot be created: `README.md` is a file, not a folder; choose another "
     "`output_dir`."),
    ("output_dir is a file", ["output_dir=README.md"],
     "`output_dir: README.md` is a file, not a folder; choose another `output_dir`."),
    ("output_dir in a read-only folder", ["output_dir={readonly}/sub"],
     "`output_dir: {readonly}/sub`: `{readonly}` is not writable, so the folder cannot be created there; choose "
     "another `output_dir` or fix its permissions."),
]


@pytest.mark.parametrize("name, overrides, expected", CHECK_FAULTS, ids=[f[0] for f in CHECK_FAULTS])
def test_check_faults(name, overrides, expected, request, tiny_base_dir, converted_data_dir):
    fill = {"readonly": request.getfixturevalue("readonly_dir")} if "{readonly}" in " ".join(overrides) else {}
    overrides = [o.format(**fill) for o in overrides]
    run = pipelines("check", TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                    *overrides, "--no-lengths")
    assert run.rc == 1
    assert "Traceback" not in run.out + run.err
    assert run.err.startswith(f"check {TINY}: 1 problem\n")
    errors = [ln for ln in run.err.splitlines() if ln.startswith("  error: ")]
    assert len(errors) == 1, run.err
    assert errors[0].startswith("  error: " + expected.format(**fill)), errors[0]
    assert not (ROOT / "README.md" / "sub").exists() and (ROOT / "README.md").is_file()


def test_check_of_a_missing_config():
    run = pipelines("check", "conf/tiny_lora_clunr.yaml")
    assert run.rc == 1
    assert one_line(run.err.split("\n", 1)[1]).startswith(
        "  error: `conf/tiny_lora_clunr.yaml` not found; pass a file of `conf/` as CONFIG (closest: "
        "`conf/tiny_lora_cluener.yaml`")



# --------------------------------------------------------------------------------------------------- train

TRAIN_FAULTS = [
    # (name, overrides, environment, the last line of stderr (regex))
    ("RESUME=1 without a checkpoint", ["output_dir={tmp}/fresh", "save_strategy='no'"], {"RESUME": "1"},
     r"train: `RESUME=1` but `.*/fresh` holds no `checkpoint-N` \(the config saves none: `save_strategy: no`; set "
     r"`save_strategy=steps save_steps=N`\); run without RESUME to start over\."),
    ("RESUME=1 before the first epoch's checkpoint", ["output_dir={tmp}/fresh"], {"RESUME": "1"},
     r"train: `RESUME=1` but `.*/fresh` holds no `checkpoint-N` \(`save_strategy: epoch`: none was saved yet\); "
     r"run without RESUME to start over\."),
    ("TRACKER=wandb", [], {"TRACKER": "wandb"},
     r"train: `TRACKER=wandb` is not a tracker; use one of: tensorboard, swanlab, none \(or leave it unset: the "
     r"config's `report_to` decides\)\."),
    ("output_dir cannot be created", ["output_dir=README.md/sub"], {},
     r"train: not launched; fix the problems above \(`make check CONFIG=conf/tiny_lora_cluener\.yaml`\)\."),
    ("RESUME=maybe", [], {"RESUME": "maybe"},
     r"train: `RESUME=maybe` is not a switch; set it to 1/0, true/false, yes/no or on/off\."),
]


@pytest.mark.parametrize("name, overrides, environ, expected", TRAIN_FAULTS, ids=[f[0] for f in TRAIN_FAULTS])
def test_train_faults(name, overrides, environ, expected, tmp_path, tiny_base_dir, converted_data_dir):
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    run = pipelines("train", TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                    *overrides, env=train_environ(**environ))
    assert run.rc == 1, run.err
    assert "Traceback" not in run.out + run.err
    last = run.err.strip().splitlines()[-1]
    assert re.fullmatch(expected, last), last
    assert "llamafactory-cli train" not in run.out  # nothing was launched
    assert not (tmp_path / "fresh").exists() and not (ROOT / "README.md" / "sub").exists()


@pytest.mark.slow
def test_ctrl_c_in_train_keeps_the_checkpoints_and_says_how_to_resume(tmp_path, tiny_base_dir, converted_data_dir):
    """Ctrl-C at the terminal (SIGINT to the whole foreground process group) during `make train`: one line saying
    what was kept, exit 130, the manifest written with that status, no process left; RESUME=1 then resumes."""
    out = tmp_path / "run"
    args = ["train", TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
            f"output_dir={out}", "max_samples=48", "per_device_train_batch_size=2", "save_strategy=steps",
            "save_steps=2", "logging_steps=1", "do_eval=false", "plot_loss=false", "report_to=none", "max_steps=400",
            "--no-check"]
    log, err = tmp_path / "out.log", tmp_path / "err.log"
    with log.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-c", CTRL_C_ABLE, *args], cwd=ROOT, env=train_environ(), stdout=o,
                                stderr=e, process_group=0)
        try:
            wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").is_file(), 600, "checkpoint-2", proc, err)
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the launcher and llamafactory-cli get it
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text() + err.read_text()
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    # the latest whole checkpoint, as RESUME picks it: one being written when Ctrl-C came has no trainer state
    latest = max((p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                 key=lambda p: int(p.name.split("-")[1]))
    cut = [p.name for p in out.glob("checkpoint-*") if not (p / "trainer_state.json").is_file()]
    assert len(cut) <= 1 and all(int(c.split("-")[1]) > int(latest.name.split("-")[1]) for c in cut), cut
    skipped = f"; `{cut[0]}`, cut off while saving, is skipped" if cut else ""
    last = err.read_text().strip().splitlines()[-1]
    assert last == (f"train: interrupted (Ctrl-C); the checkpoints in `{out}` are kept (latest `{latest.name}`{skipped}); "
                    f"resume with `make train CONFIG={TINY} ARGS=\"{' '.join(args[2:-1])}\" RESUME=1`; the manifest "
                    f"`{out / TRAIN_MANIFEST}` records exit status 130."), last
    assert json.loads((out / TRAIN_MANIFEST).read_text())["exit_code"] == 130
    assert processes_mentioning(str(out)) == []
    assert not (out / "adapter_model.safetensors").exists()  # interrupted, not finished
    dry = pipelines(*args, env=train_environ(RESUME="1", DRY_RUN="1"))
    assert dry.rc == 0, dry.err
    assert f"resume_from_checkpoint={latest}" in dry.out


