"""What vLLM serves of LoRA, as training and serving both need to know it: the ranks `--max-lora-rank` accepts
and the JSON form of one `--lora-modules` entry. No vLLM import: these are facts of vllm/config/lora.py."""

from __future__ import annotations

import json

#: The values vLLM accepts for `--max-lora-rank` (vllm/config/lora.py, `MaxLoRARanks`).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def round_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank` (ValueError above 512)."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} is above {VLLM_LORA_RANKS[-1]}, the most vLLM serves.")


def servable_rank(rank: int) -> int | None:
    """`round_rank`, or None when no `--max-lora-rank` holds the rank."""
    try:
        return round_rank(rank)
    except ValueError:
        return None


def lora_module(name: str, path: str, base_model_name: str) -> str:
    """One `--lora-modules` value in vLLM's JSON form."""
    return json.dumps({"name": name, "path": str(path), "base_model_name": base_model_name}, ensure_ascii=False)
