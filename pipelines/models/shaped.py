"""A random-weight model with a real model's shape and the tiny tokenizer: throughput figures without a hub.

    python -m pipelines shaped-model --shape qwen2.5-0.5b [--out models/qwen2.5-0.5b-shape]

Training and serving speed depend on the shape (layers, widths, vocabulary), not on the weights' values, so on
a GPU machine that cannot download Qwen2.5 this stands in for it in benchmarks (`python -m pipelines bench train
--train-model models/qwen2.5-0.5b-shape`). Its answers are noise: use it for speed, never for quality. The
tokenizer is the tiny model's (`make tiny-model`); ids above its vocabulary are never produced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from pipelines.common.paths import MODELS_DIR, TINY_MODEL, rel
from pipelines.models.tiny import copy_tokenizer

# The published shapes of Qwen2.5 (config.json of Qwen/Qwen2.5-*-Instruct).
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, initializer_range=0.02,
              use_sliding_window=False)


def build(shape: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> int:
    """Write the model to `out`; returns its parameter count."""
    import torch
    from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

    tiny = AutoConfig.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**SHAPES[shape], **COMMON, bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id,
                         pad_token_id=tiny.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)  # bf16 on disk, as Qwen2.5 is published
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer(tokenizer_dir, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines shaped-model", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES), help="whose shape")
    ap.add_argument("--tokenizer", type=Path, default=Path(TINY_MODEL),
                    help="folder with the tokenizer (default: the tiny model, %(default)s)")
    ap.add_argument("--out", type=Path, help="output folder (default: models/SHAPE-shape)")
    args = ap.parse_args(argv)
    out = args.out or MODELS_DIR / f"{args.shape}-shape"
    if not (args.tokenizer / "tokenizer_config.json").is_file():
        print(f"shaped-model: `{rel(args.tokenizer)}` holds no tokenizer; run `make tiny-model` first.",
              file=sys.stderr)
        return 1
    t0 = time.time()
    n = build(args.shape, args.tokenizer, out)
    print(f"shaped-model: wrote {rel(out)} ({n / 1e9:.2f} B parameters, random weights) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
