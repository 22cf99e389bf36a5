"""Parameter spaces: declared by environments, drawn per sample, stored as provenance, resumed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import dpx
from dpx.cli import main
from dpx.core.config import ConfigError
from dpx.core.space import PARAMETERS_FIELD, Parameter, ParameterError, ParameterSpace
from dpx.testing import prepare_environment


class Echo(dpx.Environment):
    """Its input is its parameters: what dpx handed to step() is what it stored."""

    def __init__(self):
        self.define_parameters(
            Parameter("stiffness", 1.0, 100.0, scale="log"),
            Parameter("count", 1, 5, integer=True),
            Parameter("offset", -1.0, 1.0),
        )

    def step(self):
        p = self.sample_parameters
        noise = self.rng.random()
        self.set_training_data(input=np.array([p["stiffness"], p["count"], p["offset"]]),
                               ground_truth=np.array([p["offset"] + noise]))


def generate(tmp_path, env="toy.spring", name="s", batch_nb=3, batch_size=8, new_session=True, **kwargs):
    config_kwargs = {k: kwargs.pop(k) for k in ("runner", "workers") if k in kwargs}
    config = dpx.EnvironmentConfig(env, seed=11, **config_kwargs)
    pipeline = dpx.DataGeneration(config, session_dir=str(tmp_path), session_name=name, batch_nb=batch_nb,
                                  batch_size=batch_size, progress=False, new_session=new_session, **kwargs)
    pipeline.execute()
    return pipeline.session_path


def stored(path):
    with dpx.open_database(path) as database:
        return database.read("training")


# -- declaring ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"low": 2.0, "high": 1.0}, "reversed"),
    ({"low": 0.0, "high": math.inf}, "finite"),
    ({"low": math.nan, "high": 1.0}, "finite"),
    ({"low": 0.0, "high": 10.0, "scale": "log"}, "log scale needs low > 0"),
    ({"low": -1.0, "high": 10.0, "scale": "log"}, "log scale needs low > 0"),
    ({"low": 0.5, "high": 3.0, "integer": True}, "whole bounds"),
    ({"low": 0.0, "high": 1.0, "scale": "cubic"}, "scale="),
    ({"low": 0.0, "high": 1.0, "distribution": "cauchy"}, "distribution="),
    ({"low": 1.0, "high": 10.0, "scale": "log", "distribution": "normal"}, "linear scale"),
    ({"low": 0.0, "high": 1.0, "std": 0.1}, "for distribution='normal'"),
])
def test_bad_parameters_are_refused_with_their_name(kwargs, message):
    with pytest.raises(ParameterError, match=message) as caught:
        Parameter("stiffness", **kwargs)
    assert "stiffness" in str(caught.value)


def test_a_space_refuses_duplicated_and_odd_names():
    with pytest.raises(ParameterError, match="declared twice"):
        ParameterSpace([Parameter("k", 0, 1), Parameter("k", 1, 2)])
    with pytest.raises(ParameterError, match="identifier"):
        Parameter("../k", 0, 1)


def test_from_unit_follows_each_scale():
    space = ParameterSpace([Parameter("lin", -2.0, 2.0), Parameter("log", 1e-3, 1e3, scale="log"),
                            Parameter("n", 1, 4, integer=True), Parameter("g", 0.0, 10.0, distribution="normal")])
    unit = np.random.default_rng(0).random((20_000, 4))
    values = space.from_unit(unit)
    assert values[:, 0].min() >= -2 and values[:, 0].max() <= 2
    # a log scale spends as many draws on each decade
    decades = np.histogram(np.log10(values[:, 1]), bins=6, range=(-3, 3))[0]
    assert decades.min() > 0.9 * decades.max()
    assert set(np.unique(values[:, 2])) == {1.0, 2.0, 3.0, 4.0}
    normal = values[:, 3]
    assert normal.min() >= 0 and normal.max() <= 10 and abs(normal.mean() - 5.0) < 0.05
    assert abs(normal.std() - 10 / 6) < 0.1 * 10 / 6  # mostly within bounds: nearly the untruncated std
    assert np.allclose(space.to_unit(values)[:, [0, 1]], unit[:, [0, 1]])


def test_proposals_are_checked_against_the_space():
    space = Echo().parameter_space
    good = {"stiffness": [2.0], "count": [3], "offset": [0.5]}
    assert space.as_values(good).tolist() == [[2.0, 3.0, 0.5]]
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['stifness'\]"):
        space.as_values({**good, "stifness": [1.0]})
    with pytest.raises(ParameterError, match=r"no values for parameter\(s\) \['count'\]"):
        space.as_values({"stiffness": [2.0], "offset": [0.5]})
    with pytest.raises(ParameterError, match="stiffness=1000, outside"):
        space.as_values([[1000.0, 3, 0.5]])
    with pytest.raises(ParameterError, match="non-integer"):
        space.as_values([[2.0, 2.5, 0.5]])
    with pytest.raises(ParameterError, match="NaN"):
        space.as_values([[math.nan, 2, 0.5]])
    with pytest.raises(ParameterError, match=r"shape \(1, 2\)"):
        space.as_values([[2.0, 2]])


def test_outside_a_pipeline_parameters_are_drawn_explicitly():
    env = Echo()
    env.init_database()
    with pytest.raises(RuntimeError, match="draw_parameters"):
        env.sample_parameters["stiffness"]
    with pytest.raises(RuntimeError, match="draw_parameters"):
        env.sample_parameters.array
    env = prepare_environment(Echo(), seed=3)
    env.step()
    first = env.sample["input"].copy()
    env.step()
    assert not np.array_equal(first, env.sample["input"])
    assert np.array_equal(env.sample[PARAMETERS_FIELD], env.sample["input"])


def test_an_environment_without_parameters_is_unchanged(tmp_path):
    path = generate(tmp_path, env="toy.mean")
    assert PARAMETERS_FIELD not in stored(path)
    with dpx.open_database(path) as database:
        assert len(database.parameter_space) == 0 and database.parameters() == {}
    with pytest.raises(ConfigError, match="needs an environment that declares parameters"):
        generate(tmp_path, env="toy.mean", name="sobol", sampler="sobol")


# -- drawing and storing ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["random", "sobol", "halton", "lhs", "grid"])
def test_the_parameters_handed_to_step_are_stored_with_their_names(tmp_path, sampler):
    path = generate(tmp_path, env=Echo, sampler=sampler)
    data = stored(path)
    assert np.array_equal(data[PARAMETERS_FIELD], data["input"])
    with dpx.open_database(path) as database:
        assert database.parameter_space == Echo().parameter_space
        by_name = database.parameters("training", [0, 5])
    assert list(by_name) == ["stiffness", "count", "offset"]
    assert np.array_equal(by_name["count"], data["input"][[0, 5], 1])
    assert len(np.unique(data["input"], axis=0)) > 1


def test_spring_inputs_are_its_parameters(tmp_path):
    data = stored(generate(tmp_path, sampler="sobol"))
    assert np.allclose(data["input"], data[PARAMETERS_FIELD].astype(np.float32))


@pytest.mark.parametrize("sampler", ["random", "sobol", "lhs"])
def test_samples_do_not_depend_on_batch_size_or_workers(tmp_path, sampler):
    one = stored(generate(tmp_path, name="one", batch_nb=3, batch_size=8, sampler=sampler))
    other = stored(generate(tmp_path, name="other", batch_nb=4, batch_size=6, sampler=sampler,
                            runner="multiprocess", workers=2))
    for name in one:
        assert np.array_equal(one[name], other[name]), name


def test_validation_samples_get_other_parameters(tmp_path):
    config = dpx.EnvironmentConfig("toy.spring", seed=11)
    for mode in ("training", "validation"):
        dpx.DataGeneration(config, dpx.DatabaseConfig(mode=mode), session_dir=str(tmp_path), session_name="s",
                           new_session=False, batch_nb=1, batch_size=8, sampler="sobol", progress=False).execute()
    with dpx.open_database(tmp_path / "s") as database:
        training, validation = (database.read(mode, [PARAMETERS_FIELD])[PARAMETERS_FIELD]
                                for mode in ("training", "validation"))
    assert not np.isin(training, validation).all(axis=1).any()


def test_a_resumed_run_continues_the_sequence(tmp_path):
    whole = stored(generate(tmp_path, name="whole", batch_nb=4, batch_size=8, sampler="sobol"))
    generate(tmp_path, name="resumed", batch_nb=2, batch_size=8, sampler="sobol", new_session=False)
    record = json.loads((tmp_path / "resumed" / "session.json").read_text())
    assert record["runs"][0]["sampler_state"] == {"position": 16}
    assert record["runs"][0]["sampler"]["name"] == "sobol"
    resumed = stored(generate(tmp_path, name="resumed", batch_nb=4, batch_size=8, sampler="sobol", new_session=False))
    assert np.array_equal(whole[PARAMETERS_FIELD], resumed[PARAMETERS_FIELD])


def test_info_shows_the_parameter_space(tmp_path, capsys):
    path = generate(tmp_path, env=Echo, sampler="halton")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sampler=halton" in out
    assert "stiffness" in out and "[1, 100] log" in out and "count" in out and "integer" in out


def test_a_bad_sampler_option_is_one_line_before_anything_is_written(tmp_path):
    pipeline = dpx.DataGeneration(dpx.EnvironmentConfig(Echo), session_dir=str(tmp_path), batch_nb=1,
                                  sampler="grid", sampler_kwargs={"levels": 0}, progress=False)
    with pytest.raises(ConfigError, match=r"sampler='grid'.*levels=0"):
        pipeline.prepare()
    pipeline = dpx.DataGeneration(dpx.EnvironmentConfig(Echo), session_dir=str(tmp_path), batch_nb=1,
                                  sampler="sobolx", progress=False)
    with pytest.raises(ConfigError, match="sampler='sobolx'"):
        pipeline.prepare()
    assert not any(tmp_path.iterdir())


def test_resuming_with_another_sampler_is_refused(tmp_path):
    generate(tmp_path, name="s", batch_nb=1, sampler="sobol", new_session=False)
    with pytest.raises(ConfigError, match=r"sampler='halton'.*holds samples of sampler='sobol'"):
        generate(tmp_path, name="s", batch_nb=2, sampler="halton", new_session=False)
    assert stored(tmp_path / "s")["parameters"].shape == (8, 5)


class Reversed(dpx.Environment):
    def __init__(self, high: float = 0.0):
        self.define_parameters(Parameter("stiffness", 1.0, high))

    def step(self):
        self.set_training_data(input=np.zeros(1), ground_truth=np.zeros(1))


def test_a_badly_declared_parameter_is_one_line_naming_it(tmp_path):
    pipeline = dpx.DataGeneration(dpx.EnvironmentConfig(Reversed), session_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=r"rejected by .*Reversed: parameter 'stiffness': low=1 is above high=0"):
        pipeline.prepare()
    assert not any(tmp_path.iterdir())


def test_training_fields_stay_first_when_parameters_are_declared_before_them():
    from dpx_toy.spring import Spring

    spring = Spring()
    spring.init_database()
    assert list(spring.fields) == ["input", "ground_truth", "parameters", "next_velocity"]
