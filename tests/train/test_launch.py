"""The command line and environment `pipelines.train.launch` builds for multi-GPU / multi-node runs.

No GPU here: the pure `build_launch` is tested exactly, and once the real `llamafactory-cli` launcher is run
with a stand-in `torchrun` on PATH to see the torchrun arguments LLaMA-Factory derives from that environment.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipelines.common import lfcli
from pipelines.common.paths import ROOT
from pipelines.train import launch as train

CONFIG = "conf/qwen2.5-7b-instruct_lora_cluener.yaml"
DS = "conf/deepspeed/ds_z3_config.json"
MULTI = {"PATH": "/usr/bin:/bin", "HOME": "/root", "NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "1",
         "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "DEEPSPEED": DS, "RESUME": ""}


def test_two_nodes_two_gpus_deepspeed():
    argv, env = train.build_launch(CONFIG, ["num_train_epochs=1"], MULTI)
    assert argv == lfcli.cli("train", CONFIG, "num_train_epochs=1", f"deepspeed={DS}")
    assert {k: env[k] for k in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR",
                                "MASTER_PORT")} == {
        "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500"}
    assert "DEEPSPEED" not in env and "RESUME" not in env  # ours, not LLaMA-Factory's
    assert env["HF_HUB_OFFLINE"] == "1" and env["DISABLE_VERSION_CHECK"] == "1"
    assert env["PATH"] == f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"  # torchrun is found in the venv


def test_the_venvs_bin_comes_first_on_path_once(tmp_path):
    venv_bin = str(ROOT / ".venv" / "bin")
    _, env = train.build_launch(CONFIG, [], {"PATH": f"/usr/local/bin:{venv_bin}:/usr/bin", "NPROC_PER_NODE": "2"})
    assert env["PATH"].split(":") == [venv_bin, "/usr/local/bin", "/usr/bin"]
    assert lfcli.cli_env(base={})["PATH"] == venv_bin  # even with no PATH at all
    assert lfcli.venv_path("/bin", tmp_path) == f"{tmp_path / 'bin'}:/bin"
    # what LLaMA-Factory's launcher runs by name resolves to the venv's own torchrun
    import shutil

    found = shutil.which("torchrun", path=env["PATH"])
    assert found == str(ROOT / ".venv" / "bin" / "torchrun"), found


def test_single_process_and_empty_make_variables():
    # `make` exports unset variables as empty strings: LLaMA-Factory would pass `--nproc_per_node ''` on.
    environ = {"PATH": "/bin", "NPROC_PER_NODE": "", "NNODES": "", "NODE_RANK": "", "MASTER_ADDR": "",
               "MASTER_PORT": "", "DEEPSPEED": "", "RESUME": "", "DRY_RUN": ""}
    argv, env = train.build_launch("conf/tiny_lora_cluener.yaml", [], environ, offline=False)
    assert argv == lfcli.cli("train", "conf/tiny_lora_cluener.yaml")
    assert not {"FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                "DEEPSPEED", "RESUME", "DRY_RUN", "HF_HUB_OFFLINE"} & set(env)


@pytest.mark.parametrize("environ, forced", [
    ({"NPROC_PER_NODE": "1"}, False),
    ({"NPROC_PER_NODE": "4"}, True),
    ({"NNODES": "2", "MASTER_ADDR": "node0"}, True),
    ({"DEEPSPEED": "conf/deepspeed/ds_z2_config.json"}, True),  # LLaMA-Factory runs DeepSpeed under torchrun only
])
def test_torchrun_is_forced_when_needed(environ, forced):
    _, env = train.build_launch(CONFIG, [], environ)
    assert (env.get("FORCE_TORCHRUN") == "1") is forced


def test_resume_appends_checkpoint_and_keeps_the_output_dir():
    argv, _ = train.build_launch("conf/tiny_lora_cluener.yaml", ["max_steps=4"], {},
                                 resume_from="saves/x/checkpoint-2")
    assert argv[-3:] == ["max_steps=4", "resume_from_checkpoint=saves/x/checkpoint-2", "overwrite_output_dir=false"]


@pytest.mark.parametrize("environ, expected", [
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a"}, "`NODE_RANK=2` must be below `NNODES=2`"),
    ({"NNODES": "2"}, "`NNODES=2` needs `MASTER_ADDR`, the address of the node with NODE_RANK=0, on every node."),
    ({"NPROC_PER_NODE": "two"}, "`NPROC_PER_NODE=two` is not a whole number; set it to e.g. `NPROC_PER_NODE=1`."),
    ({"NPROC_PER_NODE": "0"}, "`NPROC_PER_NODE=0` must be at least 1."),
])
def test_bad_launch_settings(environ, expected):
    with pytest.raises(train.TrainError) as e:
        train.build_launch(CONFIG, [], environ)
    assert str(e.value).startswith(expected)


def test_llamafactory_launcher_reads_that_environment(tmp_path):
    """Run the real `llamafactory-cli train` with a stand-in `torchrun` that records how it was called."""
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "torchrun.args"
    (fake / "torchrun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    (fake / "torchrun").chmod(0o755)
    environ = {**os.environ, **MULTI, "PATH": f"{fake}:{os.environ['PATH']}"}
    argv, env = train.build_launch(CONFIG, ["num_train_epochs=1"], environ)
    env["PATH"] = f"{fake}:{env['PATH']}"  # the stand-in before the venv's real torchrun
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    args = record.read_text().split("\n")
    assert args[:10] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2", "--master_addr", "10.0.0.1",
                         "--master_port", "29500"]
    assert Path(args[10]).name == "launcher.py"
    assert args[11:14] == [CONFIG, "num_train_epochs=1", f"deepspeed={DS}"]


def test_dry_run_prints_command_and_environment(capsys, converted_data_dir):
    environ = {**os.environ, **MULTI}
    rc = train.main([CONFIG, f"dataset_dir={converted_data_dir}", "--dry-run", "--no-check"], environ=environ)
    out = capsys.readouterr().out
    assert rc == 0
    assert f"$ .venv/bin/llamafactory-cli train {CONFIG} dataset_dir={converted_data_dir} deepspeed={DS}" in out
    assert ("env: NPROC_PER_NODE=2 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 FORCE_TORCHRUN=1"
            in out)


def test_make_train_passes_the_variables_through():
    """The Makefile's one-line `train` target: ARGS, NPROC_PER_NODE and DEEPSPEED reach pipelines.train."""
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(["make", "-s", "train", f"CONFIG={CONFIG}", "ARGS=num_train_epochs=1 --no-check",
                           "NPROC_PER_NODE=2", f"DEEPSPEED={DS}", "DRY_RUN=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"$ .venv/bin/llamafactory-cli train {CONFIG} num_train_epochs=1 deepspeed={DS}" in proc.stdout
    assert "env: NPROC_PER_NODE=2 FORCE_TORCHRUN=1" in proc.stdout
