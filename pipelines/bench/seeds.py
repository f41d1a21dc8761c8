"""The seeds' way, re-implemented faithfully as the baseline of the benchmarks (see /work/shared/SEEDS.md).

    python -m pipelines.bench.seeds train    --model M --data FILE --samples N --epochs E --out RESULT.json …
    python -m pipelines.bench.seeds generate --model M --adapter A --data FILE --n N --out RESULT.json …
    python -m pipelines.bench.seeds convert  --raw CLUENER_DIR --out-dir DIR --out RESULT.json

- `train`: their hand-written loop. Every sample is padded to a fixed length: the prompt, rendered with the
  chat template, padded/truncated to `max_source`; the response padded/truncated to `max_target`; one pad token
  appended as the end marker; labels -100 over the prompt, the response ids (pads included) after it. Plain
  `torch.optim.AdamW(lr)` with no scheduler, shuffled batches, LoRA through PEFT, fp32.
- `generate`: `model.generate` one prompt at a time, greedy, with the PEFT adapter (not merged).
- `convert_cluener`: their CLUENER → alpaca conversion (list form), a plain loop without checks.

Each subcommand runs as its own process (the benchmark reads its peak RSS) and writes its figures as JSON.
The pure parts (`pad_seed_example`, `seed_record`) are unit-tested.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
#: The seeds' CLUENER lengths for Qwen2.5-0.5B (SEEDS.md); `max_source` is re-derived for our longer prompts.
SEED_MAX_SOURCE = 80
SEED_MAX_TARGET = 70
#: PEFT's names of "all" linear projections of a Qwen2 block (LLaMA-Factory's `lora_target: all` finds the same).
QWEN2_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------- pure


def _fit(ids: Sequence[int], length: int, pad_id: int) -> tuple[list[int], list[int]]:
    """`ids` truncated or right-padded to `length` (the tokenizer's padding="max_length", truncation=True)."""
    kept = list(ids[:length])
    n_pad = length - len(kept)
    return kept + [pad_id] * n_pad, [1] * len(kept) + [0] * n_pad


def pad_seed_example(prompt_ids: Sequence[int], response_ids: Sequence[int], max_source: int, max_target: int,
                     pad_id: int) -> dict[str, list[int]]:
    """One training example the seeds' way: fixed length `max_source + max_target + 1`.

    input_ids = prompt (padded/truncated to max_source) + response (padded/truncated to max_target) + [pad];
    attention_mask = the tokenizer's masks of both parts (0 over pads) + [1] for the end marker;
    labels = -100 over the prompt part, then the response ids with their pads, then the end marker.
    """
    src, src_mask = _fit(prompt_ids, max_source, pad_id)
    tgt, tgt_mask = _fit(response_ids, max_target, pad_id)
    return {
        "input_ids": src + tgt + [pad_id],
        "attention_mask": src_mask + tgt_mask + [1],
        "labels": [IGNORE_INDEX] * max_source + tgt + [pad_id],
    }


def seed_record(row: dict, types: Sequence[str]) -> dict[str, str]:
    """A raw CLUENER row → their alpaca record: the types listed in the prompt, the answer a JSON list."""
    entities = [{"label": label, "text": text} for label, spans in (row.get("label") or {}).items() for text in spans]
    return {
        "instruction": "你是一个文本实体识别领域的专家，你需要从给定的句子中提取 " + "; ".join(types)
                       + " 实体. 以 json 格式输出, 如 [{\"label\": \"name\", \"text\": \"叶老桂\"}]; 没有实体时输出 [].",
        "input": row["text"],
        "output": json.dumps(entities, ensure_ascii=False),
    }


def convert_cluener(raw_dir: Path, out_dir: Path, types: Sequence[str]) -> int:
    """Their conversion of `raw_dir/{train,dev}.json` (JSON lines) into alpaca JSON lists; the records read."""
    n = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.json"), ("val", "dev.json")):
        records = []
        with open(raw_dir / name, encoding="utf-8") as f:
            for line in f:
                records.append(seed_record(json.loads(line), types))
        with open(out_dir / f"cluener_{split}.json", "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False, indent=2)
        n += len(records)
    return n


# ---------------------------------------------------------------- shared by the subcommands


def load_records(path: str | Path, n: int) -> list[dict[str, str]]:
    """The first `n` alpaca records of `path` (LLaMA-Factory's `max_samples` takes the first ones too)."""
    from pipelines.data.records import load_records as load

    return load(path, n)


def prompt_text(tokenizer: Any, record: dict[str, str]) -> str:
    """The record's prompt rendered with the model's chat template, as the evaluator sends it (system + user)."""
    from pipelines.data.records import build_messages

    return tokenizer.apply_chat_template(build_messages(record), tokenize=False, add_generation_prompt=True)


def prompt_lengths(tokenizer: Any, records: Sequence[dict[str, str]]) -> list[int]:
    return [len(tokenizer(prompt_text(tokenizer, r), add_special_tokens=False)["input_ids"]) for r in records]


def _write(path: str | Path, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- train


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    records = load_records(args.data, args.samples)
    prompts = [tok(prompt_text(tok, r), add_special_tokens=False)["input_ids"] for r in records]
    responses = [tok(r["output"], add_special_tokens=False)["input_ids"] for r in records]
    max_source = args.max_source or max(map(len, prompts))
    max_target = args.max_target or max(map(len, responses))
    examples = [pad_seed_example(p, q, max_source, max_target, tok.pad_token_id) for p, q in zip(prompts, responses)]
    data = {k: torch.tensor([e[k] for e in examples]) for k in ("input_ids", "attention_mask", "labels")}
    dataset = torch.utils.data.TensorDataset(data["input_ids"], data["attention_mask"], data["labels"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))

    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                                             lora_dropout=args.lora_dropout, target_modules=list(QWEN2_LORA_TARGETS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()

    steps, samples, tokens, positions, losses = 0, 0, 0, 0, []
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for input_ids, attention_mask, labels in loader:
            input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            samples += input_ids.shape[0]
            tokens += int(attention_mask.sum())
            positions += input_ids.numel()
            losses.append(out.loss.item())  # the loss read each step (a device sync on a GPU)
    seconds = time.perf_counter() - t0
    return {
        "steps": steps,
        "samples": samples,
        "train_seconds": seconds,
        "samples_per_s": samples / seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "padded_positions": positions,
        "pad_fraction": 1 - tokens / positions,
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "max_source": max_source,
        "max_target": max_target,
        "prompts_truncated": sum(len(p) > max_source for p in prompts),
        "responses_truncated": sum(len(q) > max_target for q in responses),
        "longest_prompt": max(map(len, prompts)),
        "longest_response": max(map(len, responses)),
        "mean_prompt": sum(map(len, prompts)) / len(prompts),
        "mean_response": sum(map(len, responses)) / len(responses),
        "prompts_longer_than_seed_max_source": sum(len(p) > SEED_MAX_SOURCE for p in prompts),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


# ---------------------------------------------------------------- generate


def generate(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.bench.measure import interpolated_percentile as percentile

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    records = load_records(args.data, args.n)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    if args.fixed_length:  # as `--ignore-eos` on the server side: every answer is exactly max_new_tokens long
        kwargs["min_new_tokens"] = args.max_new_tokens

    def one(record: dict[str, str]) -> int:
        inputs = tok(prompt_text(tok, record), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        tok.decode(new, skip_special_tokens=True)
        return int(new.numel())

    for r in records[: args.warmup]:
        one(r)
    latencies, generated = [], 0
    t0 = time.perf_counter()
    for r in records:
        t = time.perf_counter()
        generated += one(r)
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    return {
        "n": len(records),
        "seconds": seconds,
        "prompts_per_s": len(records) / seconds,
        "output_tokens_per_s": generated / seconds,
        "mean_output_tokens": generated / len(records),
        "p50_latency_ms": percentile(latencies, 50) * 1000,
        "p95_latency_ms": percentile(latencies, 95) * 1000,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.bench.seeds", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="their hand-written LoRA training loop")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True, help="alpaca JSON list")
    t.add_argument("--samples", type=int, required=True, help="the first N records")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--max-source", type=int, default=0, help="prompt length (0: the longest prompt of the samples)")
    t.add_argument("--max-target", type=int, default=SEED_MAX_TARGET, help="response length (0: the longest)")
    t.add_argument("--lora-rank", type=int, default=8)
    t.add_argument("--lora-alpha", type=int, default=32)
    t.add_argument("--lora-dropout", type=float, default=0.0)
    t.add_argument("--workers", type=int, default=0, help="DataLoader workers (the seeds used 4 on a GPU box)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda (the seeds trained on one GPU)")
    t.add_argument("--out", required=True, help="result JSON")
    g = sub.add_parser("generate", help="their one-prompt-at-a-time model.generate")
    g.add_argument("--model", required=True)
    g.add_argument("--adapter", help="PEFT adapter folder")
    g.add_argument("--data", required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--max-new-tokens", type=int, default=50)
    g.add_argument("--fixed-length", action="store_true", help="min_new_tokens = max_new_tokens (no early stop)")
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--out", required=True)
    c = sub.add_parser("convert", help="their CLUENER -> alpaca conversion (list form), no checks")
    c.add_argument("--raw", required=True, help="folder with train.json and dev.json")
    c.add_argument("--out-dir", required=True)
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "convert":
        from pipelines.data.converters import CLUENER_TYPES

        t0 = time.perf_counter()
        n = convert_cluener(Path(args.raw), Path(args.out_dir), CLUENER_TYPES)
        seconds = time.perf_counter() - t0
        result = {"records": n, "seconds": seconds, "records_per_s": n / seconds}
    else:
        result = train(args) if args.cmd == "train" else generate(args)
    _write(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
