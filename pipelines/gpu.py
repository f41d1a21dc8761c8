"""Is there a CUDA GPU here? One function, used by setup and by the run profiles."""

from __future__ import annotations

import os
import shutil
import subprocess


def has_cuda(env: dict[str, str] | None = None) -> bool:
    """True when an NVIDIA GPU is usable on this machine.

    `PIPELINES_DEVICE=cpu|cuda` forces the answer; otherwise `nvidia-smi -L` must run and list a GPU.
    Deliberately does not import torch: setup runs this before any venv exists.
    """
    env = os.environ if env is None else env
    forced = env.get("PIPELINES_DEVICE", "").strip().lower()
    if forced in ("cpu", "cuda"):
        return forced == "cuda"
    if forced:
        raise ValueError(f"`PIPELINES_DEVICE` is {forced!r}; set it to `cpu`, `cuda` or leave it unset.")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


if __name__ == "__main__":
    print("cuda" if has_cuda() else "cpu")
