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
from pipelines.common.flags import FlagError
from pipelines.common.paths import ROOT
from pipelines.train import launch as train
from pipelines.train import ranks

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
    ({"NPROC_PER_NODE": "two"}, "`NPROC_PER_NODE=two` is not a whole number; set it to one (at least 1) or leave it"),
    ({"NPROC_PER_NODE": "0"}, "`NPROC_PER_NODE=0` must be at least 1; set it higher or leave it unset."),
    ({"NNODES": "0"}, "`NNODES=0` must be at least 1"),
    ({"NODE_RANK": "-1"}, "`NODE_RANK=-1` must be at least 0"),
])
def test_bad_launch_settings(environ, expected):
    with pytest.raises((train.TrainError, FlagError)) as e:
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
    # 4 ranks keep the config's global batch of 16 (2 per device x 8 accumulation): accumulation 8 -> 2 per rank
    assert ("train: 4 ranks (NPROC_PER_NODE=2 × NNODES=2): global batch 16 = 2 per device × 2 accumulation × 4 "
            "ranks, as one process trains 16; per rank: `gradient_accumulation_steps` 8 → 2." in out)
    assert (f"$ .venv/bin/llamafactory-cli train {CONFIG} dataset_dir={converted_data_dir} "
            f"gradient_accumulation_steps=2 deepspeed={DS}" in out)
    assert ("env: NPROC_PER_NODE=2 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 FORCE_TORCHRUN=1"
            in out)


def test_make_train_passes_the_variables_through():
    """The Makefile's one-line `train` target: ARGS, NPROC_PER_NODE and DEEPSPEED reach pipelines.train."""
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(["make", "-s", "train", f"CONFIG={CONFIG}", "ARGS=num_train_epochs=1 --no-check",
                           "NPROC_PER_NODE=2", f"DEEPSPEED={DS}", "DRY_RUN=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (f"$ .venv/bin/llamafactory-cli train {CONFIG} num_train_epochs=1 gradient_accumulation_steps=4 "
            f"deepspeed={DS}" in proc.stdout)
    assert "env: NPROC_PER_NODE=2 FORCE_TORCHRUN=1" in proc.stdout


# ---- the batch split over ranks (pipelines.train.ranks) ----

TINY = "conf/tiny_lora_cluener.yaml"


@pytest.mark.parametrize("batch, accumulation, nproc, nnodes, expected", [
    (4, 2, 2, 1, {"gradient_accumulation_steps": 1}),  # the accumulation takes the world size
    (2, 8, 2, 2, {"gradient_accumulation_steps": 2}),
    (8, 1, 2, 1, {"per_device_train_batch_size": 4}),  # accumulation 1: the per-device batch is divided
    (8, 2, 4, 1, {"gradient_accumulation_steps": 1, "per_device_train_batch_size": 4}),  # both share it
    (4, 8, 1, 1, {}),
])
def test_the_global_batch_is_one_process_s(batch, accumulation, nproc, nnodes, expected):
    cfg = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
    split = ranks.per_rank(cfg, nproc, nnodes)
    assert split == expected
    world = nproc * nnodes
    assert ranks.global_batch({**cfg, **split}, world) == batch * accumulation == ranks.global_batch(cfg)
    # on the CPU the ranks talk over gloo, unless the config names a backend
    cpu = ranks.per_rank({**cfg, "use_cpu": True}, nproc, nnodes)
    assert cpu.get("ddp_backend") == ("gloo" if world > 1 else None)
    assert "ddp_backend" not in ranks.per_rank({**cfg, "use_cpu": True, "ddp_backend": "mpi"}, nproc, nnodes)


def test_world_size_and_defaults():
    assert ranks.world_size({"NPROC_PER_NODE": "2", "NNODES": "3"}) == 6
    assert ranks.world_size({"NPROC_PER_NODE": "", "NNODES": ""}) == 1
    assert ranks.global_batch({}) == 8  # transformers' defaults: batch 8, accumulation 1


def test_a_batch_the_ranks_cannot_share_is_refused_in_one_sentence(capsys, tiny_base_dir, converted_data_dir,
                                                                    tmp_path):
    environ = {**os.environ, "NPROC_PER_NODE": "2", "NNODES": "", "DRY_RUN": "1"}
    rc = train.main([TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                     f"output_dir={tmp_path / 'out'}", "per_device_train_batch_size=3",
                     "gradient_accumulation_steps=3", "--no-check"], environ=environ)
    captured = capsys.readouterr()
    assert rc == 1 and "$ " not in captured.out  # nothing launched, no command shown
    assert captured.err.strip() == (
        "train: `per_device_train_batch_size: 3` × `gradient_accumulation_steps: 3` is a global batch of 9, which "
        "2 ranks (`NPROC_PER_NODE=2` × `NNODES=1`) cannot share without changing it; set "
        "`gradient_accumulation_steps` to a multiple of 2 (e.g. `ARGS=\"gradient_accumulation_steps=6\"`, a global "
        "batch of 18) or NPROC_PER_NODE × NNODES to a divisor of 9.")


def test_dry_run_shows_the_split_on_the_cpu(capsys, tiny_base_dir, converted_data_dir, tmp_path):
    environ = {**os.environ, "NPROC_PER_NODE": "2", "NNODES": "", "DRY_RUN": "1", "OMP_NUM_THREADS": ""}
    rc = train.main([TINY, f"model_name_or_path={tiny_base_dir}", f"dataset_dir={converted_data_dir}",
                     f"output_dir={tmp_path / 'out'}", "--no-check"], environ=environ)
    out = capsys.readouterr().out
    assert rc == 0
    # the tiny config's batch 8 x accumulation 1: the per-device batch is halved, gloo on the CPU
    assert ("train: 2 ranks (NPROC_PER_NODE=2 × NNODES=1, backend gloo): global batch 8 = 4 per device × 1 "
            "accumulation × 2 ranks, as one process trains 8; per rank: `per_device_train_batch_size` 8 → 4." in out)
    assert out.split("\n")[-3].endswith("per_device_train_batch_size=4 ddp_backend=gloo")
    _, env = train.build_launch(TINY, [], environ)
    from pipelines.common.device import usable_cores

    assert env["OMP_NUM_THREADS"] == str(max(1, usable_cores() // 2))  # the two ranks share the cores


def test_visible_gpus_counts_nvidia_smi_lines_within_cuda_visible_devices():
    from pipelines.common.device import visible_gpus

    listing = "GPU 0: NVIDIA H100 (UUID: a)\nGPU 1: NVIDIA H100 (UUID: b)\nGPU 2: NVIDIA H100 (UUID: c)\n"
    assert visible_gpus({}, listing) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}, listing) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, listing) == 0
    assert visible_gpus({"PIPELINES_DEVICE": "cpu"}) == 0


def test_the_ctrl_c_line_names_a_checkpoint_cut_off_while_saving(tmp_path):
    """Ctrl-C during a save leaves `checkpoint-N` without its trainer state: RESUME skips it, and the line says so."""
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    line = train.interrupted_line(CONFIG, [], tmp_path, None, {})
    assert "are kept (latest `checkpoint-2`); resume with" in line
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "optimizer.pt").write_text("")
    line = train.interrupted_line(CONFIG, [], tmp_path, None, {})
    assert "are kept (latest `checkpoint-2`; `checkpoint-4`, cut off while saving, is skipped); resume with" in line
    assert train.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
