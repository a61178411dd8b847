"""Which tokens of the forward now running an intervention may edit.

An edit must touch real tokens only, each generated token once, and tell the prompt from
the generated text. Three facts decide that, read from the calls around the hookpoint:

* padding - the 2D ``attention_mask`` of the innermost *entry module* call now running:
  an entry module's forward takes ``attention_mask`` next to ``input_ids`` /
  ``inputs_embeds`` (the base model, an encoder or decoder stack, the task model). That is
  where the user's padding mask arrives whichever module the user called (``model(...)``
  or ``model.model(...)``), and in an encoder-decoder each stack gets its own; the layers
  below get a 4D mask or none. A mask is trusted only when it spans exactly the past plus
  the current tokens of the forward; failing that, all tokens are real. An
  encoder-decoder's own forward runs only decoder tokens outside its stacks (the LM head):
  its ``decoder_attention_mask`` is theirs, never its (encoder) ``attention_mask``.
* past length - the tokens already in the KV cache, read in the pre-hook (the layers extend
  the cache during the forward); a cache whose length cannot be read (state-space models)
  leaves it to the mask.
* prompt length - while ``model.generate`` runs, the length of the prompt it was given,
  recorded by a wrapper that exists only while an intervention is installed. Tokens at
  absolute position >= that length are "generated", whatever the cache does:
  ``use_cache=False`` recomputes the whole sequence at every step, chunked prefill and a
  reused cache start prompt tokens at a non-empty cache. Outside generate (plain forwards)
  a forward with an empty cache is "prompt" and a cached one "generated". Encoder-decoder
  models keep that plain rule inside generate too (their prompt is the encoder's input).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

_CACHE_NAMES = ("cache", "past_key_values", "cache_params")
_TRACKER = "_actspace_generate_tracker"
_MISSING = object()


@dataclass
class StepInfo:
    """What an edit function knows about the tokens of the current forward."""
    past_len: int                  # tokens already in the KV cache before this forward
    mask: torch.Tensor | None      # [B, T] bool: tokens that may be edited (None: all)
    skip: bool = False             # nothing to edit in this forward (decided without a sync)


@dataclass
class Prompt:
    """The prompt of the generate call now running."""
    length: int                    # P: absolute positions < P are prompt (padding included)
    mask: torch.Tensor | None      # [B, P] bool: generate's attention_mask, if it got one


def check_positions(positions) -> None:
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise ValueError(f"positions slice must have step 1, got {positions}")
        for end in (positions.start, positions.stop):
            if end is not None and (not isinstance(end, int) or end < 0):
                raise ValueError(f"positions slice bounds must be non-negative ints, got {positions}")
        return
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"positions must be 'all', 'prompt', 'generated' or a slice, "
                         f"got {positions!r}")


def _signature(module):
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


def _past_len(cache_position, cache) -> int | None:
    """Tokens in the cache (None: there is a cache but its length cannot be read)."""
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        try:   # a tensor for static caches: int() now, the cache updates it in place
            return int(cache.get_seq_length())
        except (ValueError, TypeError, AttributeError, NotImplementedError):
            return None   # e.g. a cache of linear-attention / state-space layers only
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)) \
            and cache[0] and isinstance(cache[0][0], torch.Tensor):
        return cache[0][0].shape[-2]   # legacy tuple cache: [B, heads, S, d_head]
    return None


class _Entry:
    """How to read one entry module's call: its signature and which mask is its tokens'."""

    def __init__(self, sig):
        self.sig = sig
        # an encoder-decoder's own forward (it takes decoder inputs) runs, outside its
        # stacks, only the decoder's tokens (e.g. lm_head): its attention_mask is the encoder's
        self.mask_name = ("decoder_attention_mask" if "decoder_input_ids" in sig.parameters
                          else "attention_mask")


def _as_entry(module: torch.nn.Module, top: bool) -> _Entry | None:
    """An entry module's forward takes the user-facing padding mask: attention_mask next
    to input_ids / inputs_embeds. The top-level model counts whatever it takes."""
    sig = _signature(module)
    params = sig.parameters if sig is not None else {}
    if top or "attention_mask" in params and ("input_ids" in params or "inputs_embeds" in params):
        return _Entry(sig if sig is not None else inspect.Signature())
    return None


class EntryCalls:
    """The calls of the model's entry modules now running, innermost last, with what
    they were given (mask, past length). Followed at run time, not by module path, so a
    module shared by encoder and decoder (an embedding) gets the state of its caller."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.stack: list[tuple[int, dict]] = []

    def current(self) -> dict:
        return self.stack[-1][1] if self.stack else {}

    def _push(self, entry: _Entry, module, args, kwargs) -> None:
        bound = dict(kwargs)
        try:
            bound.update(entry.sig.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            pass
        # the KV cache is `cache` in transformers >= 5.2x, `past_key_values` before (and
        # still accepted through **kwargs), `cache_params` for state-space models
        cache = next((bound[n] for n in _CACHE_NAMES if bound.get(n) is not None), None)
        self.stack.append((id(module), {"mask": bound.get(entry.mask_name),
                                        "past_len": _past_len(bound.get("cache_position"), cache)}))

    def _pop(self, module, args, output) -> None:
        for i in range(len(self.stack) - 1, -1, -1):   # its own last call, even after an error
            if self.stack[i][0] == id(module):
                del self.stack[i]
                return

    def install(self) -> list:
        handles = []
        try:
            for name, module in self.model.named_modules():
                entry = _as_entry(module, top=not name)
                if entry is None:
                    continue
                handles.append(module.register_forward_pre_hook(
                    functools.partial(self._push, entry), with_kwargs=True))
                handles.append(module.register_forward_hook(self._pop, always_call=True))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles


def _prompt_of(args, kwargs) -> Prompt | None:
    ids = kwargs.get("input_ids", kwargs.get("inputs"))
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    emb = kwargs.get("inputs_embeds")
    src = emb if isinstance(emb, torch.Tensor) else ids
    if not isinstance(src, torch.Tensor) or src.dim() < 2:
        return None   # no prompt given (generate starts from BOS): the plain rule applies
    am = kwargs.get("attention_mask")
    # continuing from a cache, input_ids may hold only the new tokens while the mask
    # spans the whole sequence: the mask's length is then the prompt's
    if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[0] == src.shape[0] \
            and am.shape[1] >= src.shape[1]:
        return Prompt(am.shape[1], am.bool())
    return Prompt(src.shape[1], None)


class GenerateTracker:
    """Records each model.generate call's prompt while interventions are installed.

    It replaces `generate` by an instance attribute wrapping it, shared by every
    intervention on the model (reference-counted) and removed when the last one is:
    interventions may then exit in any order. A `generate` bound before the intervention
    was installed is not seen (its forwards follow the plain rule)."""

    @classmethod
    def attach(cls, model: torch.nn.Module) -> "GenerateTracker | None":
        tracker = getattr(model.__dict__.get("generate"), _TRACKER, None)
        if tracker is None:
            if not callable(getattr(model, "generate", None)) or \
                    getattr(getattr(model, "config", None), "is_encoder_decoder", False):
                return None
            tracker = cls(model)
        tracker.users += 1
        return tracker

    def __init__(self, model: torch.nn.Module):
        self.model, self.users, self.calls = model, 0, []
        self._prev = model.__dict__.get("generate", _MISSING)
        inner = model.generate

        @functools.wraps(inner)
        def generate(*args, **kwargs):
            self.calls.append(_prompt_of(args, kwargs))
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls.pop()

        setattr(generate, _TRACKER, self)
        self._wrapper = generate
        model.__dict__["generate"] = generate

    def current(self) -> Prompt | None:
        return self.calls[-1] if self.calls else None

    def release(self) -> None:
        self.users -= 1
        # if someone wrapped generate over ours meanwhile, ours stays (harmless) below theirs
        if self.users == 0 and self.model.__dict__.get("generate") is self._wrapper:
            if self._prev is _MISSING:
                del self.model.__dict__["generate"]
            else:
                self.model.__dict__["generate"] = self._prev


def _mask_and_past(st: dict, prompt: Prompt | None, B: int, T: int, device):
    """(past length, [B, past + T] bool mask or None = all real) for a forward of T tokens."""
    past, am = st.get("past_len", 0), st.get("mask")
    if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[0] == B and (
            am.shape[1] == past + T if past is not None else am.shape[1] >= T):
        return am.shape[1] - T, am.to(device).bool()
    past = past or 0
    # no usable mask in the forward (a static cache passes a 4D one): generate's own
    # 2D mask covers the prompt, and every generated token is real
    if prompt is not None and prompt.mask is not None and prompt.mask.shape[0] == B:
        n, pm = past + T, prompt.mask.to(device)
        if n <= prompt.length:
            return past, pm[:, :n]
        return past, torch.cat([pm, pm.new_ones(B, n - prompt.length)], 1)
    return past, None


def step_info(x: torch.Tensor, st: dict, prompt: Prompt | None, positions) -> StepInfo:
    """Editable-token mask for activation x [B, T, d] under `positions`."""
    if x.dim() != 3:   # not a [B, T, d] stream: no padding or position to respect
        return StepInfo(0, None, skip=positions not in ("all", "prompt"))
    B, T = x.shape[0], x.shape[1]
    past, am = _mask_and_past(st, prompt, B, T, x.device)
    if am is not None:
        mask = am[:, past:]
        # index of each token among the row's real tokens (left padding shifts it)
        real_index = (am.long().cumsum(1) - 1)[:, past:]
    else:
        mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        real_index = torch.arange(past, past + T, device=x.device).expand(B, T)
    if positions in ("prompt", "generated"):
        # absolute positions past..past+T-1 against the prompt length P; outside generate
        # a forward with an empty cache is all prompt, a cached one all generated
        P = prompt.length if prompt is not None else (T if past == 0 else past)
        want_prompt = positions == "prompt"
        if (past >= P) if want_prompt else (past + T <= P):
            return StepInfo(past, None, skip=True)
        if past < P < past + T:
            col = torch.arange(past, past + T, device=x.device)
            mask = mask & ((col < P) if want_prompt else (col >= P))
    elif isinstance(positions, slice):
        lo = positions.start or 0
        hi = positions.stop if positions.stop is not None else 1 << 62
        mask = mask & (real_index >= lo) & (real_index < hi)
    return StepInfo(past, mask)
