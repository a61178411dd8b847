"""Find a steering direction in all-MiniLM-L6-v2 and in a tiny causal LM, and apply it.

    python examples/steer.py [--out DIR]

Shows: SteeringVector.from_contrast (difference of means) with its provenance,
steering_sweep (target effect and cost for each alpha, so alpha is chosen from evidence),
ablating the direction, steering generate() on a causal LM (a tiny random Llama: no
download), and saving as safetensors and as a llama.cpp GGUF control vector.
"""
from __future__ import annotations

import os

import torch

import actspace as acts
from _common import english, minilm, parse_args

SPORTS = ["The striker scored twice in the final minutes of the match.",
          "Our team won the championship after a tense penalty shootout.",
          "The goalkeeper made a stunning save in the second half.",
          "Fans cheered as the runners crossed the finish line.",
          "The coach praised the defence after the league victory.",
          "She served three aces to win the tennis set."]
COOKING = ["Simmer the tomato sauce slowly with garlic and fresh basil.",
           "Knead the dough, then let the bread rise for an hour.",
           "Whisk the eggs with sugar until the mixture is pale.",
           "Roast the vegetables with olive oil and a pinch of salt.",
           "Stir the risotto often and add warm stock a ladle at a time.",
           "Bake the cake until a skewer comes out clean."]


def encoder_part(out):
    model, tok = minilm()
    hp = "encoder.layer.3"
    v = acts.SteeringVector.from_contrast(model, tok, SPORTS, COOKING, hookpoint=hp,
                                          method="mean", position="mean")
    print(f"direction at {hp}: norm {v[hp].norm():.2f}, provenance "
          f"{ {k: v.provenance[k] for k in ('method', 'n_positive', 'n_negative')} }")
    # alpha in units of the typical activation norm at hp; effect: projection of the
    # layer-5 pooled activations on the sports-minus-cooking direction found there
    probe = acts.SteeringVector.from_contrast(model, tok, SPORTS, COOKING,
                                              hookpoint="encoder.layer.5", position="mean")
    rows = acts.steering_sweep(model, tok, v, [0, 0.1, 0.2, 0.4, 0.8],
                               neutral_texts=english(8, 300),
                               alpha_units="norm",
                               target={"probe": probe["encoder.layer.5"],
                                       "hookpoint": "encoder.layer.5"})
    print(rows.table())
    with acts.ablate(model, v, hp):           # the direction projected out at hp
        batch = tok(SPORTS[:2], return_tensors="pt", padding=True)
        with torch.no_grad():
            model(**batch)
    v.save(os.path.join(out, "sports.safetensors"))
    print(f"saved {os.path.join(out, 'sports.safetensors')} (+ .json provenance)")


def causal_part(out):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = minilm()                         # any tokenizer works for a random model
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64,
                                         intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    hp = "model.layers.2"
    v = acts.SteeringVector.from_contrast(model, tok, SPORTS, COOKING, hookpoint=hp)
    enc = tok("The weather today", return_tensors="pt", add_special_tokens=False)
    ids = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    plain = model.generate(**ids, **kw)
    with v.apply(model, alpha=0.5, alpha_units="norm", positions="all"):
        steered = model.generate(**ids, **kw)
    print(f"generate: {plain[0, -8:].tolist()}\n steered: {steered[0, -8:].tolist()}")
    v.to_gguf(os.path.join(out, "control.gguf"))
    back = acts.SteeringVector.from_gguf(os.path.join(out, "control.gguf"), model=model)
    assert torch.equal(back[hp], v[hp])
    print(f"GGUF control vector: {os.path.join(out, 'control.gguf')} (round trip exact)")


def main(argv=None):
    _, out = parse_args(__doc__, argv)
    encoder_part(out)
    causal_part(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
