"""What this machine trains on: is there a CUDA GPU (setup, run profiles), does the CPU have native bf16, how many
cores may this process use."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pipelines.common.errors import PipelinesError


class DeviceError(PipelinesError, ValueError):
    """A device setting the user can fix."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a CPU-limited container's share), at least 1.

    Training, serving and the benchmarks size their thread counts by this one figure."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def has_cuda(env: Mapping[str, str] | None = None) -> bool:
    """True when an NVIDIA GPU is usable on this machine.

    `PIPELINES_DEVICE=cpu|cuda` forces the answer; otherwise `nvidia-smi -L` must run and list a GPU.
    Deliberately does not import torch: setup runs this before any venv exists.
    """
    env = os.environ if env is None else env
    forced = env.get("PIPELINES_DEVICE", "").strip().lower()
    if forced in ("cpu", "cuda"):
        return forced == "cuda"
    if forced:
        raise DeviceError(f"`PIPELINES_DEVICE` is {forced!r}; set it to `cpu`, `cuda` or leave it unset.")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def visible_gpus(env: Mapping[str, str] | None = None, listing: str | None = None) -> int:
    """How many GPUs a process started with `env` sees (`torch.cuda.device_count()` without torch): the entries of
    CUDA_VISIBLE_DEVICES when it is set, else the `GPU` lines of `nvidia-smi -L` (`listing`); 0 without CUDA."""
    env = os.environ if env is None else env
    if listing is None:
        if not has_cuda(env):
            return 0
        smi = shutil.which("nvidia-smi") or "nvidia-smi"
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return 0
    found = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return min(found, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return found


# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 and AMX on x86, BF16 on Arm
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes in bf16 natively, so that bf16 autocast trains faster than fp32 (about 1.4x
    for the tiny model's LoRA on 2 AVX512-BF16 cores); without, bf16 is emulated through conversions to fp32,
    which buys no speed. `cpuinfo` is the text of /proc/cpuinfo (read when not given); unknown counts as no."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and BF16_FLAGS & set(value.split()):
            return True
    return False


if __name__ == "__main__":
    print("cuda" if has_cuda() else "cpu")
