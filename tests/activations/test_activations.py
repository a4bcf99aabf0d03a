"""Activation extraction against a naive per-image loop, and the on-disk cache: hits, misses,
corruption, resumption after an interruption, format versions."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
from torch import nn

from face_concepts.activations.cache import FORMAT_VERSION, ActivationCache
from face_concepts.activations.extract import extract_activations
from face_concepts.activations.inputs import content_hash
from face_concepts.models import ModelSplit

SIZE = 12  # input side of the tiny test network
EXACT = 1e-6  # batched vs per-image extraction of the same float32 network


class CountingFeatures(nn.Module):
    """conv → ReLU that counts the images it sees, and can fail after a number of batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 5, 3)
        self.rows = 0
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        self.rows += x.shape[0]
        return torch.relu(self.conv(x))


def _split(fail_after: int | None = None) -> ModelSplit:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        head = nn.Linear(5, 3)
    feats = CountingFeatures(fail_after)
    model = nn.Sequential(feats, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return ModelSplit(feats, head, model=model, input_size=SIZE, name="tiny", layer="conv")


def _x(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))


def _naive(split: ModelSplit, x: torch.Tensor, spatial: bool = False) -> torch.Tensor:
    with torch.no_grad():
        rows = [split.features(xi[None]) for xi in x]
    return torch.cat([r if spatial else r.mean(dim=(2, 3)) for r in rows])


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_matches_naive_loop(batch_size):
    split, x = _split(), _x()
    A = extract_activations(split, x, batch_size=batch_size, progress=False)
    assert split.features.calls == -(-10 // batch_size)  # one forward per batch
    assert A.shape == (10, 5) and A.dtype == torch.float32 and A.device.type == "cpu"
    torch.testing.assert_close(A, _naive(split, x), atol=EXACT, rtol=0)


def test_spatial_and_iterables():
    split, x = _split(), _x()
    S = extract_activations(split, x, batch_size=4, progress=False, spatial=True)
    torch.testing.assert_close(S, _naive(split, x, spatial=True), atol=EXACT, rtol=0)
    A = extract_activations(split, x, progress=False)
    for inputs in ([x[:3], x[3:4], x[4:]], (b for b in [x[:7], x[7:]])):
        torch.testing.assert_close(
            extract_activations(split, inputs, batch_size=4, progress=False), A
        )


def test_result_is_usable_under_autograd():
    A = extract_activations(_split(), _x(), progress=False)
    assert not A.is_inference() and not A.requires_grad
    w = torch.ones(5, requires_grad=True)
    ((A * w) ** 2).sum().backward()  # inference tensors would refuse to be saved for backward
    assert w.grad is not None


def test_progress_goes_to_stderr(capsys):
    extract_activations(_split(), _x(), progress=False)
    assert capsys.readouterr().err == ""
    extract_activations(_split(), _x(), progress=True)
    out = capsys.readouterr()
    # not a terminal: one summary line, no carriage-return redraws
    assert out.out == "" and out.err.startswith("activations: 10 images in ")
    assert out.err.count("\n") == 1 and "\r" not in out.err


def test_input_errors():
    split = _split()
    with pytest.raises(ValueError, match="batch_size"):
        extract_activations(split, _x(), batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        extract_activations(split, torch.zeros(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="floating"):
        extract_activations(split, torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(TypeError, match="tensor"):
        extract_activations(split, [[1, 2, 3]])
    with pytest.raises(ValueError, match="empty"):
        extract_activations(split, [], progress=False)


def test_content_hash():
    x = _x()
    assert content_hash(x) == content_hash([x[:4], x[4:]]) == content_hash(x.clone())
    y = x.clone()
    y[7, 1, 2, 3] += 1e-6
    assert content_hash(y) != content_hash(x)
    assert content_hash(x[:9]) != content_hash(x)


# --------------------------------------------------------------------------- cache
def _cache(tmp_path, shard_size: int = 4) -> ActivationCache:
    return ActivationCache(tmp_path / "cache", shard_size=shard_size)


def _entry(cache: ActivationCache):
    (entry,) = [p for p in cache.root.iterdir() if p.is_dir()]
    return entry, json.loads((entry / "manifest.json").read_text())


def test_cache_hit_and_miss(tmp_path):
    cache, x = _cache(tmp_path), _x()
    first = _split()
    A = extract_activations(first, x, batch_size=3, cache=cache, progress=False)
    assert first.features.rows == 10
    torch.testing.assert_close(A, _naive(first, x), atol=EXACT, rtol=0)
    again = _split()
    B = extract_activations(again, [x[:5], x[5:]], batch_size=2, cache=cache, progress=False)
    assert again.features.calls == 0 and torch.equal(A, B)  # served from disk
    for kwargs in ({"cache_key_extra": {"patch": {"patch_size": 8}}}, {"spatial": True}):
        other = _split()
        extract_activations(other, x, cache=cache, progress=False, **kwargs)
        assert other.features.rows == 10
    y = x.clone()
    y[0, 0, 0, 0] += 1.0
    changed = _split()
    extract_activations(changed, y, cache=cache, progress=False)
    assert changed.features.rows == 10


def test_manifest_records_checksums_and_no_temp_files(tmp_path):
    cache = _cache(tmp_path)
    extract_activations(_split(), _x(), cache=cache, progress=False)
    entry, manifest = _entry(cache)
    assert (
        manifest["format_version"] == FORMAT_VERSION
        and manifest["complete"]
        and manifest["n_samples"] == 10
    )
    assert sorted(manifest["shards"]) == ["0", "1", "2"]
    for info in manifest["shards"].values():
        assert hashlib.sha256((entry / info["file"]).read_bytes()).hexdigest() == info["sha256"]
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, damage):
    cache, x = _cache(tmp_path), _x()
    A = extract_activations(_split(), x, cache=cache, progress=False)
    entry, manifest = _entry(cache)
    shard = entry / manifest["shards"]["1"]["file"]
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # inside the tensor bytes: still a valid file, wrong values
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:20]))
    else:
        shard.unlink()
    split = _split()
    with pytest.warns(RuntimeWarning, match="corrupt or missing"):
        B = extract_activations(split, x, cache=cache, progress=False)
    assert split.features.rows == 4 and torch.equal(A, B)  # only the bad shard was recomputed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next call is a clean hit
        assert torch.equal(extract_activations(_split(), x, cache=cache, progress=False), A)


def test_resume_after_interruption(tmp_path):
    cache, x = _cache(tmp_path), _x()
    interrupted = _split(fail_after=3)  # batch_size 2, shard 4: dies inside the second shard
    with pytest.raises(RuntimeError, match="simulated"):
        extract_activations(interrupted, x, batch_size=2, cache=cache, progress=False)
    _, manifest = _entry(cache)
    assert sorted(manifest["shards"]) == ["0"] and not manifest["complete"]
    resumed = _split()
    A = extract_activations(resumed, x, batch_size=2, cache=cache, progress=False)
    assert resumed.features.rows == 6  # shards 1 and 2 only
    torch.testing.assert_close(A, _naive(resumed, x), atol=EXACT, rtol=0)


@pytest.mark.parametrize("manifest_text", ["version", "garbage"])
def test_bad_manifest_is_ignored_and_rebuilt(tmp_path, manifest_text):
    cache, x = _cache(tmp_path), _x()
    A = extract_activations(_split(), x, cache=cache, progress=False)
    entry, manifest = _entry(cache)
    if manifest_text == "version":
        manifest["format_version"] = FORMAT_VERSION + 1
        text = json.dumps(manifest)
    else:
        text = "{not json"
    (entry / "manifest.json").write_text(text)
    split = _split()
    with pytest.warns(RuntimeWarning, match="format version|unreadable"):
        B = extract_activations(split, x, cache=cache, progress=False)
    assert split.features.rows == 10 and torch.equal(A, B)
    assert _entry(cache)[1]["format_version"] == FORMAT_VERSION


def test_key_depends_on_every_field(tmp_path):
    cache = _cache(tmp_path)
    base = {
        "fingerprint": "f",
        "layer": "l",
        "preprocess": {"crop_size": 224},
        "patch": {"patch_size": 64},
        "data_hash": "d",
    }
    k = cache.key(**base)
    assert k == cache.key(**base)
    for field, value in [
        ("fingerprint", "g"),
        ("layer", "m"),
        ("preprocess", {"crop_size": 256}),
        ("patch", None),
        ("data_hash", "e"),
    ]:
        assert cache.key(**{**base, field: value}) != k
    assert cache.key(**base, extra={"a": 1}) != k
    with pytest.raises(TypeError, match="JSON"):
        cache.key(**base, extra={"a": object()})
    with pytest.raises(ValueError, match="shard_size"):
        ActivationCache(tmp_path, shard_size=0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_stream_writes_shards_without_holding_them_and_feeds_a_minibatch_fit(tmp_path):
    from face_concepts.activations.cache import CachedActivations
    from face_concepts.decomposition import FACE

    x = _x(23)
    ref = _naive(_split(), x)
    split = _split()
    cache = ActivationCache(tmp_path, shard_size=5)
    kept = []
    real_run = cache.run

    def run(*args, **kw):  # the streaming path must ask the cache not to keep the shards
        kept.append(kw.get("keep", True))
        return real_run(*args, **kw)

    cache.run = run
    src = extract_activations(split, x, batch_size=4, cache=cache, stream=True, progress=False)
    assert isinstance(src, CachedActivations) and kept == [False]
    assert len(src) == 23 and [t.shape[0] for t in src] == [5, 5, 5, 5, 3]
    assert torch.allclose(torch.cat(list(src)), ref, atol=EXACT)
    assert real_run(src.key, x, lambda c: 1 / 0, _NoBarStub(), keep=False) is None  # a hit
    # the same entry in memory, and a mini-batch fit straight from the shards
    again = extract_activations(split, x, cache=cache, progress=False)
    assert split.features.rows == 23 and torch.equal(again, torch.cat(list(src)))
    fit = FACE(split.head, 2, kl_weight=1.0, batch_size=8, max_iter=2).fit(src)
    assert fit.concept_bank_.shape == (2, 5)


def test_stream_needs_a_cache_and_a_re_iterable(tmp_path):
    split, x = _split(), _x(6)
    with pytest.raises(ValueError, match="needs a cache"):
        extract_activations(split, x, stream=True, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        extract_activations(
            split, iter([x[:3], x[3:]]), cache=ActivationCache(tmp_path), stream=True,
            progress=False,
        )  # fmt: skip


class _NoBarStub:
    def update(self, n):
        pass
