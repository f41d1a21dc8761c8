"""`pipelines.models.shaped`: a random-weight model of a given shape with the tiny tokenizer (GPU throughput)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.models import shaped as shaped_model


def test_shapes_are_qwen25s():
    s = shaped_model.SHAPES["qwen2.5-0.5b"]
    assert (s["hidden_size"], s["num_hidden_layers"], s["vocab_size"]) == (896, 24, 151936)
    assert shaped_model.SHAPES["qwen2.5-7b"]["tie_word_embeddings"] is False


def test_builds_a_loadable_model_of_the_shape(tmp_path: Path, tiny_base_dir: Path, monkeypatch, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a small shape of the same form, so that the test builds in a second
    monkeypatch.setitem(shaped_model.SHAPES, "test-shape",
                        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, vocab_size=8192, tie_word_embeddings=True))
    out = tmp_path / "shaped"
    assert shaped_model.main(["--shape", "test-shape", "--tokenizer", str(tiny_base_dir), "--out", str(out)]) == 0
    assert "random weights" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (64, 2, 8192)
    tok = AutoTokenizer.from_pretrained(out)
    base_tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    messages = [{"role": "user", "content": "抽取实体：张伟在北京。"}]
    assert tok.apply_chat_template(messages, tokenize=False) == base_tok.apply_chat_template(messages, tokenize=False)
    assert cfg["eos_token_id"] == base_tok.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("抽取实体", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == 8192 and torch.isfinite(model(ids).logits).all()
    assert not (tmp_path / "shaped.tmp").exists()


def test_a_folder_without_tokenizer_is_one_sentence(tmp_path: Path, capsys):
    assert shaped_model.main(["--shape", "qwen2.5-0.5b", "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "holds no tokenizer" in err and "make tiny-model" in err
