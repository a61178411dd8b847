"""A byte-level tokenizer whose token id is the byte value (0..255) plus one end-of-text token.

Why: the shipped small causal LM (`pydoc_lm`) reads raw UTF-8 bytes, and users load it with
plain `transformers.AutoTokenizer` offline. A `tokenizers` BPE model with the 256 GPT-2
byte characters and no merges, behind the ByteLevel pre-tokenizer and decoder, does exactly
that and saves to one tokenizer.json.
"""
from __future__ import annotations

EOS = "<|endoftext|>"


def byte_characters() -> list[str]:
    """The printable character GPT-2's ByteLevel pre-tokenizer uses for each byte 0..255."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # unprintable bytes move above 255, in byte order
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_byte_tokenizer():
    """A `PreTrainedTokenizerFast`: byte b -> id b, EOS (also pad) -> id 256, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: b for b, c in enumerate(byte_characters())}
    vocab[EOS] = 256
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS, padding_side="left", model_max_length=256)
