"""Minimal GGUF v3 reader/writer for llama.cpp control vectors.

llama.cpp (`--control-vector file.gguf`) reads one f32 tensor per layer named
``direction.<layer>`` (layer = index of the decoder layer whose output it is added to;
llama.cpp rejects layer 0) plus the metadata ``general.architecture = "controlvector"``,
``controlvector.model_hint`` and ``controlvector.layer_count``. That is a handful of fields,
so a small struct-based writer replaces a dependency on the `gguf` package. The reader
accepts any GGUF v2/v3 file whose tensors are all F32 (enough to read control vectors back).
"""
from __future__ import annotations

import os
import struct

import numpy as np

from .._io import write_atomic

_MAGIC = b"GGUF"
_ALIGN = 32
# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i",
           _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}
_GGML_F32 = 0


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, value) -> bytes:
    if isinstance(value, str):
        return _str(key) + struct.pack("<I", _STR) + _str(value)
    if isinstance(value, bool):
        return _str(key) + struct.pack("<I?", _BOOL, value)
    if isinstance(value, int):   # repeng/llama.cpp write layer_count as uint32
        if 0 <= value < 1 << 32:
            return _str(key) + struct.pack("<II", _U32, value)
        return _str(key) + struct.pack("<Iq", _I64, value)
    if isinstance(value, float):
        return _str(key) + struct.pack("<If", _F32, value)
    raise TypeError(f"GGUF metadata {key!r}: unsupported value type {type(value).__name__}")


def write_control_vector(path, directions: dict[int, np.ndarray], model_hint: str) -> None:
    """Write {layer: [d] float32} as a llama.cpp control vector (atomically)."""
    if not directions:
        raise ValueError("directions must not be empty")
    layers = sorted(directions)
    meta = {"general.architecture": "controlvector", "controlvector.model_hint": str(model_hint),
            "controlvector.layer_count": len(layers)}
    arrays = [np.ascontiguousarray(directions[l], dtype="<f4").reshape(-1) for l in layers]
    head = bytearray(_MAGIC + struct.pack("<IQQ", 3, len(layers), len(meta)))
    for k, v in meta.items():
        head += _kv(k, v)
    offset = 0
    for l, a in zip(layers, arrays):
        head += _str(f"direction.{l}") + struct.pack("<I", 1) + struct.pack("<Q", a.shape[0])
        head += struct.pack("<IQ", _GGML_F32, offset)
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    head += b"\0" * (-len(head) % _ALIGN)
    body = b"".join(a.tobytes() + b"\0" * (-a.nbytes % _ALIGN) for a in arrays)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, bytes(head) + body)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        if self.pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"ends at byte {len(self.data)}, inside a field at byte {self.pos}")
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise ValueError(f"a string of {n} bytes at byte {self.pos} runs past the end")
        try:
            s = self.data[self.pos:self.pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"a string at byte {self.pos} is not UTF-8") from None
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STR:
            return self.string()
        if vtype == _ARR:
            etype, n = self.take("<IQ")
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"GGUF: unknown metadata value type {vtype}")


def read_gguf(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {tensor name: float32 array}) of a GGUF file with F32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {data[:4]!r})")
    r = _Reader(data)
    r.pos = 4
    where = "the header"
    try:   # a truncated or corrupt file: an error naming it and where, never struct.error
        version, n_tensors, n_kv = r.take("<IQQ")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} not supported (2 or 3)")
        meta = {}
        for i in range(n_kv):
            where = f"metadata entry {i}"
            key = r.string()
            where = f"metadata entry {key!r}"
            meta[key] = r.value(r.take("<I"))
        infos = []
        for i in range(n_tensors):
            where = f"tensor info {i}"
            name = r.string()
            where = f"tensor info {name!r}"
            nd = r.take("<I")
            dims = [r.take("<Q") for _ in range(nd)]
            ttype, off = r.take("<IQ")
            if ttype != _GGML_F32:
                raise ValueError(f"{path}: tensor {name!r} has ggml type {ttype}, only F32 "
                                 "is supported")
            infos.append((name, dims, off))
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: malformed GGUF file ({where}: {e})") from None
    align = meta.get("general.alignment", _ALIGN)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0:
        raise ValueError(f"{path}: malformed GGUF file (general.alignment={align!r})")
    base = r.pos + (-r.pos % align)
    tensors = {}
    for name, dims, off in infos:
        n = int(np.prod(dims)) if dims else 1
        start = base + off
        if start + 4 * n > len(data):
            raise ValueError(f"{path}: tensor {name!r} runs past the end of the file")
        # GGUF lists dims fastest-first; numpy wants slowest-first
        tensors[name] = np.frombuffer(data, dtype="<f4", count=n, offset=start).reshape(dims[::-1]).copy()
    return meta, tensors


def read_control_vector(path) -> tuple[dict[int, np.ndarray], dict]:
    """({layer: [d] float32}, metadata) of a llama.cpp control vector."""
    meta, tensors = read_gguf(path)
    if meta.get("general.architecture") != "controlvector":
        raise ValueError(f"{path}: general.architecture is {meta.get('general.architecture')!r}, "
                         f"expected 'controlvector'")
    out = {}
    for name, a in tensors.items():
        prefix, _, idx = name.partition(".")
        if prefix != "direction" or not idx.isdigit():
            raise ValueError(f"{path}: unexpected tensor {name!r} (expected direction.<layer>)")
        out[int(idx)] = a.reshape(-1)
    return out, meta
