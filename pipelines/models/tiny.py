"""`make tiny-model`: build a tiny Qwen2-architecture model with random weights, here, offline, seeded.

It stands in for Qwen2.5-*-Instruct on machines with no GPU and no model hub: same architecture class,
same special tokens, same chat template (with Qwen2.5's default system prompt), so the very same configs,
templates and serving flags apply. Its byte-level BPE tokenizer is trained with the `tokenizers` library on
the project's own pre-training text (`pipelines.models.corpus`). head_dim is 32 because vLLM's CPU attention needs
at least 32. It loads in both venvs (transformers 5.6 in .venv, 5.19 in .venv-vllm).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from pipelines.common.paths import TINY_MODEL
from pipelines.models.corpus import pretrain_corpus, task_prompts

SEED = 0
#: The files of a tokenizer and chat template that a model folder built from this one copies verbatim.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja", "generation_config.json")
VOCAB_SIZE = 6000  # BPE merges target; the embedding is padded to a multiple of 64
TOKENIZER_PROMPT_REPEATS = 10
# At most 6 bytes (two CJK characters) per token. Trained on a few thousand documents, unbounded BPE merges
# whole CLUENER sentences into 1–4 tokens, and a model cannot copy an entity out of a token that holds it
# together with its neighbours (measured: valid JSON 0.21 → 1.00, type-F1 0.21 → 0.80 with this bound).
MAX_TOKEN_BYTES = 6
ARCH = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, initializer_range=0.02)
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2's pre-tokenisation pattern (letters runs, single digits, punctuation runs, newlines, spaces).
PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# ChatML as Qwen2.5 renders it: an explicit system message first, else Qwen2.5's default system prompt;
# tool results go back as a user turn wrapped in <tool_response>.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tokenizer_corpus(docs: list[str]) -> list[str]:
    """The pre-training text plus the tasks' fixed prompts, repeated so that BPE merges them into a few
    tokens (as a real tokenizer's vocabulary covers common text). Pre-training itself never sees them."""
    return docs + task_prompts() * TOKENIZER_PROMPT_REPEATS


def spec_digest(docs: list[str]) -> str:
    """Everything the built model depends on; a rebuild happens only when this changes."""
    spec = [SEED, VOCAB_SIZE, MAX_TOKEN_BYTES, ARCH, SPECIAL_TOKENS, CHAT_TEMPLATE, PRETOKENIZE]
    h = hashlib.sha256(json.dumps(spec).encode())
    for d in docs:
        h.update(d.encode("utf-8") + b"\0")
    return h.hexdigest()


def train_tokenizer(docs: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  max_token_length=MAX_TOKEN_BYTES,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def build(out: Path, docs: list[str]) -> None:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    tok = train_tokenizer(docs)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=IM_END,
                                   additional_special_tokens=[IM_START, IM_END], model_max_length=2048,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(tmp)
    cfg_path = tmp / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    tcfg.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, errors="replace", split_special_tokens=False,
                add_prefix_space=False, chat_template=CHAT_TEMPLATE)
    cfg_path.write_text(json.dumps(tcfg, ensure_ascii=False, indent=2))
    tok.model.save(str(tmp))  # vocab.json + merges.txt, for loaders that rebuild the BPE from them

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab = -(-tok.get_vocab_size() // 64) * 64
    config = Qwen2Config(vocab_size=vocab, bos_token_id=ids[PAD], eos_token_id=ids[IM_END],
                         pad_token_id=ids[PAD], use_sliding_window=False, **ARCH)
    config.torch_dtype = torch.float32
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[ids[IM_END], ids[PAD]], pad_token_id=ids[PAD],
                                               bos_token_id=ids[PAD], do_sample=False)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines tiny-model", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=TINY_MODEL, help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    args = ap.parse_args(argv)
    out = Path(args.out)
    docs = tokenizer_corpus(pretrain_corpus(SEED))
    digest = spec_digest(docs)
    stamp = out / "pipelines-build.sha256"
    if not args.force and stamp.exists() and stamp.read_text().strip() == digest:
        print(f"tiny-model: {out} is up to date")
        return 0
    t0 = time.time()
    print(f"tiny-model: training a tokenizer on {len(docs)} documents and building {out} …", flush=True)
    build(out, docs)
    stamp.write_text(digest + "\n")
    print(f"tiny-model: wrote {out} in {time.time() - t0:.1f} s")
    return 0


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer and chat template files of model folder `src` that exist into `dst`."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


if __name__ == "__main__":
    sys.exit(main())
