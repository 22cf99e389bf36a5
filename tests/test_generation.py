"""DataGeneration end to end: environments, checks, bad samples, sessions, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError
from dpx.core.environment import FieldError
from dpx.core.producer import EnvironmentFailure, SampleError


class Noise(dpx.Environment):
    """Fields learned from the first sample; every value drawn from self.rng."""

    def __init__(self, size: int = 3):
        self.size = size

    def step(self):
        x = self.rng.normal(size=(self.size,)).astype(np.float32)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))


def generate(tmp_path, env, batch_nb=4, batch_size=8, name="s", database=None, **kwargs):
    config = env if isinstance(env, dpx.EnvironmentConfig) else dpx.EnvironmentConfig(env, seed=7, **kwargs)
    pipeline = dpx.DataGeneration(config, database, session_dir=str(tmp_path), session_name=name,
                                  batch_nb=batch_nb, batch_size=batch_size, progress=False, new_session=False)
    return pipeline.execute()


def test_generates_a_session_with_the_design_layout(tmp_path):
    summary = generate(tmp_path, Noise, database=dpx.DatabaseConfig(normalize=True))
    assert summary.produced == summary.total == 32
    session = tmp_path / "s"
    assert {p.name for p in session.iterdir()} >= {"dataset", "network", "stats", "info.txt", "session.json"}
    assert "Noise" in (session / "info.txt").read_text()
    record = json.loads((session / "session.json").read_text())
    assert record["runs"][0]["seed"] == 7 and record["runs"][0]["plugins"]["dpx"] == dpx.__version__
    db = dpx.open_database(session)
    data = db.read("training")
    assert data["input"].shape == (32, 3) and data["input"].dtype == np.float32
    np.testing.assert_allclose(data["ground_truth"][:, 0], data["input"].sum(axis=1), rtol=1e-5)
    stats = db.normalization["input"]
    np.testing.assert_allclose(stats.mean, data["input"].mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.std, data["input"].std(axis=0), rtol=1e-5)


def test_new_session_never_overwrites(tmp_path):
    config = dpx.EnvironmentConfig(Noise, seed=1)
    paths = [dpx.DataGeneration(config, session_dir=str(tmp_path), session_name="run", batch_nb=1, batch_size=2,
                                progress=False).execute().session_path for _ in range(2)]
    assert [p.name for p in paths] == ["run", "run_1"]
    assert dpx.open_database(paths[0]).count() == 2


def test_same_seed_same_dataset_and_resume_equals_uninterrupted_run(tmp_path):
    full = generate(tmp_path, Noise, batch_nb=6, name="full")
    generate(tmp_path, Noise, batch_nb=2, name="resumed")
    resumed = generate(tmp_path, dpx.EnvironmentConfig(Noise), batch_nb=6, name="resumed")  # seed from the record
    assert resumed.produced == 32 and resumed.total == 48
    a = dpx.open_database(full.session_path).read()["input"]
    b = dpx.open_database(resumed.session_path).read()["input"]
    assert np.array_equal(a, b)
    assert generate(tmp_path, Noise, batch_nb=6, name="resumed").produced == 0
    other = generate(tmp_path, dpx.EnvironmentConfig(Noise, seed=8), batch_nb=1, name="other")
    assert not np.array_equal(dpx.open_database(other.session_path).read()["input"], a[:8])


def test_modes_have_their_own_streams(tmp_path):
    generate(tmp_path, Noise, batch_nb=1)
    generate(tmp_path, Noise, batch_nb=1, database=dpx.DatabaseConfig(mode="validation"))
    db = dpx.open_database(tmp_path / "s")
    assert db.count("training") == db.count("validation") == 8
    assert not np.array_equal(db.read("training")["input"], db.read("validation")["input"])


class WrongShape(Noise):
    def step(self):
        self.steps = getattr(self, "steps", 0) + 1
        n = 4 if self.steps == 5 else 3
        self.set_training_data(input=np.zeros(n, np.float32), ground_truth=np.zeros(1, np.float32))


class WrongDtype(Noise):
    def init_database(self):
        self.define_training_fields(("input", np.int32, (3,)), ("ground_truth", np.int32, (1,)))

    def step(self):
        self.set_training_data(input=np.zeros(3), ground_truth=np.zeros(1, np.int32))


class NeverSet(Noise):
    def init_database(self):
        self.define_training_fields("input", "ground_truth")
        self.define_additional_fields(("parameters", np.float32, (2,)))


class Undeclared(Noise):
    def step(self):
        self.set_training_data(input=np.zeros(3), ground_truth=np.zeros(1), velocity=np.zeros(3))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (WrongShape, r"field 'input' of sample 4 has shape \(4,\), but the field is \(3,\)"),
        (WrongDtype, r"field 'input' of sample 0 has dtype float64, which cannot be stored as the field's int32"),
        (NeverSet, r"field 'parameters' was never set; call self.set_additional_data\(parameters=...\)"),
        (Undeclared, r"set training field 'velocity', which is not declared"),
    ],
)
def test_bad_fields_are_named(tmp_path, env, message):
    with pytest.raises(FieldError, match=message):
        generate(tmp_path, env, batch_nb=8)


class Crashing(Noise):
    def step(self):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 58:
            self.explode()
        super().step()

    def explode(self):
        raise ZeroDivisionError("the mesh inverted")


def test_crashing_step_carries_traceback_and_keeps_stored_samples(tmp_path):
    with pytest.raises(EnvironmentFailure) as raised:
        generate(tmp_path, Crashing, batch_nb=100, batch_size=10)
    message = str(raised.value)
    assert "Crashing instance 0/1" in message and "the mesh inverted" in message and "in explode" in message
    assert "producing sample 57:" in message
    db = dpx.open_database(tmp_path / "s")
    assert db.count() == 50
    assert np.isfinite(db.read()["input"]).all()


class SometimesNaN(Noise):
    def step(self):
        super().step()
        if self.rng.random() < 0.2:
            self.sample["input"] = np.full(3, np.nan, np.float32)


def test_non_finite_samples_error_or_are_dropped(tmp_path):
    with pytest.raises(SampleError, match=r"field 'input' holds NaN or inf in sample\(s\) \[\d+"):
        generate(tmp_path, SometimesNaN, name="strict")
    summary = generate(tmp_path, SometimesNaN, name="lenient", non_finite="drop")
    assert summary.total == 32 and summary.non_finite > 0
    assert np.isfinite(dpx.open_database(summary.session_path).read()["input"]).all()


class Picky(Noise):
    def check_sample(self):
        return float(self.sample["input"][0]) > 0


def test_refused_samples_are_stepped_again_and_recorded(tmp_path):
    summary = generate(tmp_path, Picky, record_wrong_samples=True)
    data = dpx.open_database(summary.session_path).read()["input"]
    assert (data[:, 0] > 0).all() and summary.refused > 0
    wrong = sorted((summary.session_path / "dataset" / "wrong_samples").glob("*.npz"))
    assert len(wrong) == summary.refused
    with np.load(wrong[0], allow_pickle=False) as refused:
        assert refused["input"][0] <= 0


class Stubborn(Noise):
    def check_sample(self):
        return False


def test_too_many_refusals_is_a_clear_error(tmp_path):
    with pytest.raises(SampleError, match=r"refused sample 0 4 times in a row \(max_wrong_samples_per_step=3\)"):
        generate(tmp_path, Stubborn, max_wrong_samples_per_step=3)


class Counting(Noise):
    def init(self):
        self.steps = 0

    async def step(self):  # DeepPhysX environments may step asynchronously
        self.steps += 1
        self.set_training_data(input=np.full(3, self.steps, np.float32), ground_truth=np.zeros(1, np.float32))


def test_async_step_and_simulations_per_step(tmp_path):
    generate(tmp_path, Counting, batch_nb=1, batch_size=4, simulations_per_step=3)
    assert dpx.open_database(tmp_path / "s").read()["input"][:, 0].tolist() == [3, 6, 9, 12]


def test_registered_names_and_env_kwargs(tmp_path):
    summary = generate(tmp_path, "toy.mean", env_kwargs={"n_points": 5})
    assert dpx.open_database(summary.session_path).fields()["input"][1] == (5, 3)
    with pytest.raises(ConfigError, match=r"env_kwargs.n_pointz=5 rejected by toy.mean: no such parameter "
                                          r"\(did you mean 'n_points'\?\)"):
        generate(tmp_path, "toy.mean", name="bad", env_kwargs={"n_pointz": 5})
    assert not (tmp_path / "bad").exists(), "a refused env_kwargs must not leave a session behind"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": "2"}, r"workers='2' is a str, expected int"),
        ({"workers": 0}, r"workers=0: must be at least 1"),
        ({"non_finite": "ignore"}, r"non_finite='ignore' is a str, expected one of 'error', 'drop'"),
        ({"environment_class": int}, r"environment_class=<class 'int'>: must be a subclass of dpx.Environment"),
    ],
)
def test_environment_config_errors_name_the_parameter(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dpx.EnvironmentConfig(**{"environment_class": Noise, **kwargs})


def test_database_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match=r"DatabaseConfig: mode='train' is a str, expected one of 'training'"):
        dpx.DatabaseConfig(mode="train")
    with pytest.raises(ConfigError, match=r"max_file_size=0: must be positive"):
        dpx.DatabaseConfig(max_file_size=0)


def test_existing_dir_is_extended_or_copied(tmp_path):
    first = generate(tmp_path, Noise, batch_nb=1).session_path
    copy = dpx.DataGeneration(dpx.EnvironmentConfig(Noise, seed=7), dpx.DatabaseConfig(existing_dir=str(first)),
                              session_dir=str(tmp_path), session_name="copy", batch_nb=2, batch_size=8,
                              progress=False).execute()
    assert copy.session_path.name == "copy" and copy.total == 16
    assert dpx.open_database(first).count() == 8, "a new session must not modify the dataset it copied"


def test_load_samples_is_refused_by_data_generation_not_ignored(tmp_path):
    config = dpx.EnvironmentConfig(Noise, load_samples=True)  # Training and Prediction feed stored samples
    with pytest.raises(ConfigError, match=r"load_samples=True feeds stored samples .* DataGeneration produces new ones"):
        dpx.DataGeneration(config, session_dir=str(tmp_path), batch_nb=1, batch_size=4).prepare()
