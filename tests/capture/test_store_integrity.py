"""Reads check what they read: a flipped byte in a shard, or a manifest whose row counts
were edited, raises an error naming the shard on every read path (ActivationStore.read,
[], shard, iter_batches in order and shuffled, encode_store, `actspace stats/encode`, the
latent store's readers) instead of returning altered values; verify() reports both; the
check runs once per shard and process, and verify=False skips it."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from _saeeval_helpers import basis_sae, random_store
from actspace import _io
from actspace.capture import store as store_mod
from actspace.capture.store import ActivationStore
from actspace.cli.main import main
from actspace.decompose import latent_store as LS
from actspace.decompose.latent_examples import top_examples
from actspace.decompose.latents import encode_store


def flip_data_byte(path, at: float = 0.5) -> None:
    """Flip one byte inside the data region of a safetensors file (after its header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    i = start + int((len(data) - start) * at)
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def flipped(tmp_path):
    path, shards = random_store(tmp_path / "acts", d=16, sizes=(37, 50, 21))
    name = ActivationStore.open(path).shards[1]["file"]
    flip_data_byte(path / name, at=0.1)                  # inside acts of shard 1
    return path, name, shards


READS = {
    "read": lambda s: s.read(0, len(s)),
    "read_one_row": lambda s: s.read(40, 41),
    "getitem": lambda s: s[:],
    "shard": lambda s: s.shard(1),
    "field": lambda s: s.read(0, len(s), "doc_ids"),
    "iter_batches": lambda s: list(s.iter_batches(8)),
    "iter_batches_shuffled": lambda s: list(s.iter_batches(8, shuffle=True, buffer_size=16)),
}


@pytest.mark.parametrize("how", list(READS))
def test_flipped_byte_raises_naming_the_shard(flipped, how):
    path, name, _ = flipped
    with pytest.raises(ValueError, match=f"{name}.*corrupt"):
        READS[how](ActivationStore.open(path))


def test_verify_false_reads_without_checking(flipped):
    path, name, shards = flipped
    got = ActivationStore.open(path, verify=False).read(0, 37 + 50)
    assert got.shape == (87, 16)
    assert not torch.equal(got[37:], shards[1]["acts"])      # the altered value, unchecked
    assert ActivationStore.open(path).verify() == [name]


def test_checked_once_per_shard_and_process(tmp_path, monkeypatch):
    path, shards = random_store(tmp_path / "acts", d=16, sizes=(37, 50, 21))
    calls = []
    real = store_mod.verify_file
    monkeypatch.setattr(store_mod, "verify_file",
                        lambda p, *a: calls.append(p) or real(p, *a))
    s = ActivationStore.open(path)
    want = torch.cat([sh["acts"] for sh in shards])
    assert torch.equal(torch.cat(list(s.iter_batches(10))), want)
    assert torch.equal(s[:], want)
    assert torch.equal(ActivationStore.open(path).read(3, 100), want[3:100])
    assert len(calls) == 3                                     # one per shard, ever
    # rewriting a shard (new inode and mtime) makes it checked again
    name = s.shards[0]["file"]
    (path / name).write_bytes((path / name).read_bytes())
    ActivationStore.open(path).read(0, 1)
    assert len(calls) == 4


def test_stores_without_xxh3_are_checked_by_sha256(tmp_path):
    path, _ = random_store(tmp_path / "acts", d=16, sizes=(20, 30))
    man = json.loads((path / "manifest.json").read_text())
    for s in man["shards"]:
        del s["xxh3_64"]
    (path / "manifest.json").write_text(json.dumps(man))
    flip_data_byte(path / man["shards"][0]["file"])
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        ActivationStore.open(path).read(0, 5)


@pytest.mark.parametrize("delta", [-5, +5, +100])
def test_manifest_rows_edited(tmp_path, delta):
    path, _ = random_store(tmp_path / "acts", d=16, sizes=(37, 50, 21))
    man = json.loads((path / "manifest.json").read_text())
    man["shards"][1]["rows"] += delta
    (path / "manifest.json").write_text(json.dumps(man))
    s = ActivationStore.open(path)
    assert s.verify() == [man["shards"][1]["file"], "manifest.json"]
    with pytest.raises(ValueError, match=f"{man['shards'][1]['file']}.*does not match the "
                                         "manifest.*acts has shape"):
        list(s.iter_batches(16))
    man["shards"][1]["rows"] = -100                          # not a count at all
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="manifest.json: shard .* rows=-100"):
        ActivationStore.open(path)


def test_encode_store_and_cli_refuse_a_corrupt_source(flipped, tmp_path, capsys):
    path, name, _ = flipped
    sae = basis_sae(16, k=4)
    with pytest.raises(ValueError, match=f"{name}.*corrupt"):
        encode_store(sae, path, tmp_path / "lat")
    sae.save(tmp_path / "sae")
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "sae"), str(path), str(tmp_path / "lat2"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "corrupt" in err
    assert main(["stats", str(path), "--recompute", "--json", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err


def test_latent_store_reads_are_checked(tmp_path):
    path, _ = random_store(tmp_path / "acts", d=16, sizes=(20, 30))
    stats = encode_store(basis_sae(16, k=4), path, tmp_path / "lat")
    man = LS.read_manifest(tmp_path / "lat")
    assert all(s.get("xxh3_64") for s in man["shards"])
    assert len(list(LS.iter_shards(tmp_path / "lat"))) == 2
    lat = man["shards"][1]["file"]
    flip_data_byte(tmp_path / "lat" / lat, at=0.2)
    with pytest.raises(ValueError, match=f"{lat}.*corrupt"):
        list(LS.iter_shards(tmp_path / "lat"))
    with pytest.raises(ValueError, match=f"{lat}.*corrupt"):
        top_examples(tmp_path / "lat", stats, context=2)
    assert len(list(LS.iter_shards(tmp_path / "lat", verify=False))) == 2
    man["shards"][0]["rows"] += 3                            # rows checked too
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="the manifest says 23 rows"):
        next(LS.iter_shards(tmp_path / "lat"))


def test_verify_file(tmp_path):
    from safetensors.torch import save

    data = save({"a": torch.randn(3, 4).bfloat16(), "b": torch.arange(5, dtype=torch.int32)})
    p = tmp_path / "x.safetensors"
    p.write_bytes(data)
    _io.verify_file(p, {_io.CHECKSUM: _io.checksum_bytes(data)})
    _io.verify_file(p, {"sha256": hashlib.sha256(data).hexdigest()})
    with pytest.raises(ValueError, match="x.safetensors: f is corrupt"):
        _io.verify_file(p, {_io.CHECKSUM: "0" * 16}, "f")
    with pytest.raises(FileNotFoundError, match="missing"):
        _io.verify_file(tmp_path / "nope", {_io.CHECKSUM: "0"}, "shard")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt"):
        _io.verify_file(tmp_path / "empty", {_io.CHECKSUM: "0" * 16})
