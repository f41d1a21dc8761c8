"""Helpers for tests that need a real vLLM server (no fixtures here; they live in the test modules).

`served(cfg)` is `pipelines.serve.running` with the tests' start timeout: it starts the server through the
launcher (polls `/health` and `/v1/models`, raises "server exited: …" / "server failed to start in time …")
and stops its whole process group on exit (SIGTERM, then SIGKILL). `make_lora_adapter` writes a small PEFT LoRA adapter
with random, non-zero B weights, so that its outputs differ from the base model's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pipelines import serve
from pipelines.serve.config import ServeConfig

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Seconds a test waits for a server; CPU start-up (torch compile warm-up included) is about a minute.
START_TIMEOUT = float(os.environ.get("SERVE_TEST_TIMEOUT", "420"))


def make_lora_adapter(base: str | Path, out: Path, r: int = 8, seed: int = 0, std: float = 0.2) -> Path:
    """Save a LoRA adapter of `base` (all linear layers, rank `r`) with random weights into `out`.

    B ~ N(0, std) instead of PEFT's zeros, so the adapter changes the greedy output of the tiny model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    conf = LoraConfig(r=r, lora_alpha=2 * r, target_modules=ALL_LINEAR, lora_dropout=0.0,
                      init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, conf)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    peft_model.save_pretrained(str(out))
    return out


def served(cfg: ServeConfig, run_dir: Path, env: Mapping[str, str] | None = None,
           timeout: float = START_TIMEOUT):
    """Start `cfg` with the launcher, yield the running server, stop it (no process left) on exit."""
    return serve.running(cfg, run_dir, env=env, timeout=timeout)
