"""The database layer: normalisation statistics and batch reading."""

from __future__ import annotations

import numpy as np
import pytest

import dpx
from dpx.core.database import Database, Moments


@pytest.mark.parametrize(
    ("shape", "loc"),
    [((64, 100, 3), 0.5), ((300, 30, 3), 1000.0), ((777, 5), -3.0), ((100,), 2.0), ((20, 1, 16, 16), 0.1)],
)
def test_moments_match_numpy_in_float64_and_merge_exactly(shape, loc):
    x = np.random.default_rng(0).normal(loc, 1.0, size=shape).astype(np.float32)
    reference = x.reshape(-1, x.shape[-1] if x.ndim > 1 else 1).astype(np.float64)
    whole = Moments.of(x)
    np.testing.assert_allclose(whole.mean, reference.mean(axis=0), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(whole.std, reference.std(axis=0), rtol=1e-6)  # float32 partial sums
    split = len(x) // 3
    merged = Moments.of(x[:split]).merge(Moments.of(x[split:]))
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-6)
    assert Moments.from_json(merged.as_json()).m2.tolist() == merged.m2.tolist()


def make_dataset(path, count=50, normalize=True):
    with Database(path, dpx.DatabaseConfig(normalize=normalize, max_file_size=1e-6)) as db:  # 1 kB partitions
        db.prepare("training", {"input": (np.float32, (4,)), "ground_truth": (np.int64, ())})
        for start in range(0, count, 8):
            ids = np.arange(start, min(start + 8, count))
            db.append("training", {"input": np.repeat(ids[:, None], 4, axis=1).astype(np.float32), "ground_truth": ids})


def test_shuffled_and_ordered_batches_cover_every_sample_once(tmp_path):
    make_dataset(tmp_path)
    db = dpx.open_database(tmp_path)
    ordered = [b["ground_truth"].copy() for b in db.batches(batch_size=16, shuffle=False)]
    assert [len(b) for b in ordered] == [16, 16, 16, 2]
    assert np.concatenate(ordered).tolist() == list(range(50))
    shuffled = np.concatenate([b["ground_truth"].copy() for b in db.batches(batch_size=16, rng=np.random.default_rng(1))])
    assert sorted(shuffled.tolist()) == list(range(50)) and shuffled.tolist() != list(range(50))
    for b in db.batches(batch_size=7, fields=["input"]):
        assert set(b) == {"input"} and (b["input"][:, 0] == b["input"][:, 3]).all()


def test_normalisation_is_exact_on_reload_and_recomputable(tmp_path):
    make_dataset(tmp_path)
    db = dpx.open_database(tmp_path)
    values = np.repeat(np.arange(50)[:, None], 4, axis=1).astype(np.float64)
    np.testing.assert_allclose(db.normalization["input"].mean, values.mean(axis=0))
    np.testing.assert_allclose(db.normalization["input"].std, values.std(axis=0))
    assert "ground_truth" not in db.normalization, "integer fields are not normalised"
    with Database(tmp_path, dpx.DatabaseConfig(normalize=True)) as writer:
        recomputed = writer.recompute_normalization(chunk=7)
    assert recomputed["input"].m2 == pytest.approx(db.normalization["input"].m2)


def test_unknown_mode_and_storage_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown database mode 'test'"):
        Database(tmp_path, dpx.DatabaseConfig()).prepare("test", {"x": (np.float32, ())})
    with pytest.raises(dpx.plugins.UnknownComponentError, match="unknown storage backend 'hdf5'.*available: .*memmap"):
        Database(tmp_path / "b", dpx.DatabaseConfig(storage="hdf5"))
