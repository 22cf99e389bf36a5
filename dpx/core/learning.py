"""The ActiveLearning pipeline: spend a simulation budget where the surrogate is unsure.

A round trains an ensemble of ``ensemble`` networks (the :class:`~dpx.Training`
pipeline, seeds differing) from each sample's ``parameters`` to the
environment's target fields, scores a pool of candidate parameter vectors by
the ensemble's disagreement (the standard deviation of its members'
predictions), picks the next ``batch_size`` vectors by score with a diversity
term (a picked vector lowers the score of its neighbours, so one batch spreads
over the space and fills every worker), simulates them with the configured
runner and stores them. The first round simulates a space-filling design
(``initial_sampler``). It stops when ``max_simulations`` samples are stored or
``max_seconds`` have passed.

``scoring="mc_dropout"`` is the cheaper option: one network (with dropout, e.g.
``fc``'s ``network_kwargs`` ``dropout``) is trained per round, and a candidate's
score is the spread of ``mc_samples`` predictions made with its dropout on
(Gal and Ghahramani's Monte Carlo dropout); the network backend provides
``predict_with_dropout`` (see :mod:`dpx.core.network`).

Everything lives in one session: the dataset (training samples and, when
``validation_samples``, a held-out validation set drawn at random, not counted
in the budget), one training session per member and round under
``ensemble/``, and, in ``session.json``, every round: the vectors picked, their
scores, the simulations spent and the validation error. Running it again with
``new_session=False`` resumes after the last stored round.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import MODE_STREAMS, ConfigError, DatabaseConfig, EnvironmentConfig, NetworkConfig, as_record
from dpx.core.database import Database
from dpx.core.preflight import SetUp, available_memory, check_environment, check_session_location
from dpx.core.producer import resolve_seed
from dpx.core.sampling import ask_checked, build_sampler, sampler_seed
from dpx.core.session import Session, outcome_of
from dpx.core.space import PARAMETERS_FIELD, ParameterSpace

#: Candidates whose ensemble predictions are held at once while scoring a pool.
SCORE_CHUNK = 4096
#: Bytes a candidate costs while a pool is scored: its vector, its unit-cube position, its score.
CANDIDATE_BYTES = 3 * 8
#: How a pool is scored: by the disagreement of an ensemble, or by one network's Monte Carlo dropout.
SCORINGS = ("ensemble", "mc_dropout")
#: Members trained per round when ``ensemble`` is not given, by scoring.
DEFAULT_MEMBERS = {"ensemble": 4, "mc_dropout": 1}


@dataclass
class RoundRecord:
    """What one round did, as recorded in ``session.json`` (``rounds``)."""

    round: int
    simulations: int
    validation_error: float | None
    seconds: float
    picked: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    scoring: str = "ensemble"

    def __str__(self) -> str:
        error = "n/a" if self.validation_error is None else f"{self.validation_error:.4g}"
        return (f"round {self.round}: {self.simulations} simulations, validation error {error} "
                f"({self.seconds:.1f}s)")


@dataclass
class LearningSummary:
    session_path: Path
    rounds: list[RoundRecord]
    seconds: float

    @property
    def simulations(self) -> int:
        return self.rounds[-1].simulations if self.rounds else 0

    def __str__(self) -> str:
        last = self.rounds[-1] if self.rounds else None
        error = "n/a" if last is None or last.validation_error is None else f"{last.validation_error:.4g}"
        return (f"{len(self.rounds)} rounds, {self.simulations} simulations in {self.seconds:.1f}s; "
                f"last validation error {error}\nsession: {self.session_path}")


class ActiveLearning:
    """Active learning of a surrogate of ``environment_config``'s environment (which must declare parameters).

    ``network_config`` describes each ensemble member; its inputs are always
    the samples' ``parameters`` (the quantities candidates are known by), its
    targets ``network_config.target_fields``. ``pool_size`` candidates come
    from ``pool_sampler`` each round (``sobol`` by default, seeded by round);
    ``diversity`` scales the radius within which a picked vector damps its
    neighbours' scores (0: pure top-k). ``warm_start`` starts each member
    from its previous round's weights. ``epoch_nb`` epochs of ``train_batch_nb``
    batches (None: one pass over the samples) of ``train_batch_size`` samples
    are each member's training per round. ``scoring`` is ``"ensemble"`` (the
    disagreement of ``ensemble`` networks, 4 by default) or ``"mc_dropout"``
    (one network with dropout, scored by the spread of ``mc_samples``
    predictions with its dropout on).
    """

    def __init__(
        self,
        environment_config: EnvironmentConfig,
        network_config: NetworkConfig | None = None,
        database_config: DatabaseConfig | None = None,
        session_dir: str = "sessions",
        session_name: str = "learning",
        new_session: bool = True,
        initial_sampler: str = "sobol",
        initial_samples: int = 32,
        batch_size: int = 16,
        max_simulations: int = 128,
        max_seconds: float | None = None,
        ensemble: int | None = None,
        scoring: str = "ensemble",
        mc_samples: int = 20,
        pool_size: int = 2048,
        pool_sampler: str = "sobol",
        diversity: float = 1.0,
        validation_samples: int = 256,
        epoch_nb: int = 2,
        train_batch_nb: int | None = 100,
        train_batch_size: int = 32,
        warm_start: bool = True,
        seed: int | None = None,
        progress: bool | None = False,
        echo: bool = True,
    ) -> None:
        if scoring not in SCORINGS:
            raise ConfigError(f"ActiveLearning: scoring={scoring!r} must be one of {', '.join(map(repr, SCORINGS))}")
        if scoring == "mc_dropout" and ensemble not in (None, 1):
            raise ConfigError(f"ActiveLearning: ensemble={ensemble!r} is for scoring='ensemble'; scoring='mc_dropout' "
                              "trains one network per round: set ensemble = 1 or leave it out")
        ensemble = DEFAULT_MEMBERS[scoring] if ensemble is None else ensemble
        for name, value, minimum in (("initial_samples", initial_samples, 1), ("batch_size", batch_size, 1),
                                     ("max_simulations", max_simulations, 1),
                                     ("ensemble", ensemble, 2 if scoring == "ensemble" else 1),
                                     ("mc_samples", mc_samples, 2),
                                     ("pool_size", pool_size, 1), ("validation_samples", validation_samples, 0),
                                     ("epoch_nb", epoch_nb, 1), ("train_batch_size", train_batch_size, 1),
                                     ("train_batch_nb", 1 if train_batch_nb is None else train_batch_nb, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"ActiveLearning: {name}={value!r} must be an integer >= {minimum}")
        if initial_samples > max_simulations:
            raise ConfigError(f"ActiveLearning: initial_samples={initial_samples} exceeds "
                              f"max_simulations={max_simulations}; lower it or raise the budget")
        if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
            raise ConfigError(f"ActiveLearning: max_seconds={max_seconds!r} must be a positive number (or unset)")
        if not (isinstance(diversity, (int, float)) and math.isfinite(diversity) and diversity >= 0):
            raise ConfigError(f"ActiveLearning: diversity={diversity!r} must be a finite number >= 0")
        self.environment_config = environment_config
        network_config = network_config or NetworkConfig()
        self.network_config = dataclasses.replace(network_config, input_fields=[PARAMETERS_FIELD])
        self.database_config = database_config or DatabaseConfig(normalize=True)
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.initial_sampler, self.initial_samples = initial_sampler, initial_samples
        self.batch_size, self.max_simulations, self.max_seconds = batch_size, max_simulations, max_seconds
        self.ensemble, self.pool_size, self.pool_sampler = ensemble, pool_size, pool_sampler
        self.scoring, self.mc_samples = scoring, mc_samples
        self.diversity, self.validation_samples = float(diversity), validation_samples
        self.epoch_nb, self.train_batch_nb, self.train_batch_size = epoch_nb, train_batch_nb, train_batch_size
        self.warm_start = warm_start
        self.seed, self.progress, self.echo = seed, progress, echo
        self.session_path: Path | None = None

    # -- set-up ------------------------------------------------------------------------

    def prepare(self) -> SetUp:
        """Check every component and the memory a pool needs; nothing is written."""
        from dpx.core.network import check_network

        setup = SetUp()
        check_session_location("ActiveLearning", self.session_dir, self.session_name)
        check_environment(self.environment_config, setup)
        space = setup.space
        if not len(space):
            raise ConfigError(f"ActiveLearning: {self.environment_config.environment_name} declares no parameters; "
                              "active learning chooses parameters (define_parameters() in the environment's __init__)")
        build_sampler("ActiveLearning", self.initial_sampler, space, 0, self.initial_samples)
        build_sampler("ActiveLearning", self.pool_sampler, space, 0, self.pool_size)
        missing = [name for name in self.network_config.target_fields if setup.fields_complete and name not in setup.fields]
        if missing:
            raise ConfigError(f"NetworkConfig: target_fields {missing} are not fields of the environment "
                              f"({sorted(setup.fields)})")
        backend = check_network(self.network_config)
        if self.scoring == "mc_dropout":
            self._check_dropout(backend)
        needed = self.pool_size * (len(space) * 8 + CANDIDATE_BYTES)
        available = available_memory()
        if available is not None and needed > available // 2:
            raise ConfigError(f"ActiveLearning: pool_size={self.pool_size} candidates need about {needed / 2**30:.1f} GiB "
                              f"of memory, more than half the {available / 2**30:.1f} GiB available; lower pool_size")
        scoring = (f"{self.ensemble} members" if self.scoring == "ensemble"
                   else f"MC dropout ({self.mc_samples} passes)")
        setup.checked.append(f"active learning over {', '.join(space.names)}: {scoring}, "
                             f"pool of {self.pool_size} ({self.pool_sampler}), budget {self.max_simulations} simulations")
        return setup

    def _check_dropout(self, backend: type) -> None:
        """MC dropout needs a backend that predicts with dropout on, and a network that has some."""
        if not callable(getattr(backend, "predict_with_dropout", None)):
            raise ConfigError(f"ActiveLearning: scoring='mc_dropout' needs a network backend that predicts with "
                              f"dropout on; backend {self.network_config.backend!r} cannot (no predict_with_dropout): "
                              "use scoring='ensemble'")
        dropout = self.network_config.network_kwargs.get("dropout")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not dropout > 0:
            given = "no dropout" if dropout is None else f"dropout={dropout!r}"
            raise ConfigError(f"ActiveLearning: scoring='mc_dropout' samples the network's dropout, but its "
                              f"network_kwargs set {given}: give it some ([network.network_kwargs] dropout = 0.1 "
                              "for fc), or use scoring='ensemble'")

    # -- running -----------------------------------------------------------------------

    def execute(self, setup: SetUp | None = None) -> LearningSummary:
        setup = setup or self.prepare()
        session = Session.start(self.session_dir, self.session_name, self.new_session)
        self.session_path = session.path
        previous = session.last_run("ActiveLearning")
        seed = self.seed if self.seed is not None else (previous or {}).get("seed")
        seed, key = resolve_seed(seed)
        rounds = [RoundRecord(**r) for r in (previous or {}).get("rounds", [])]
        database = Database(session.dataset_dir, self.database_config)
        session.record_run("ActiveLearning", {
            "environment": as_record(self.environment_config),
            "network": as_record(self.network_config),
            "database": as_record(self.database_config),
            "pipeline": {name: getattr(self, name) for name in (
                "initial_sampler", "initial_samples", "batch_size", "max_simulations", "max_seconds", "ensemble",
                "scoring", "mc_samples", "pool_size", "pool_sampler", "diversity", "validation_samples", "epoch_nb",
                "train_batch_nb", "train_batch_size", "warm_start")},
        }, seed=seed, outcome="started", parameter_space=setup.space.describe(), rounds=[dataclasses.asdict(r) for r in rounds])
        run = _Loop(self, session, database, setup.space, seed, rounds)
        outcome = "completed"
        started = time.perf_counter()
        try:
            run.runner = setup.runner_class(self.environment_config, key)
            run.runner.start()
            run.loop()
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            run.close()
            session.finish_run(outcome, rounds=[dataclasses.asdict(r) for r in run.rounds],
                               samples=run.stored("training"))
        return LearningSummary(session.path, run.rounds, time.perf_counter() - started)


class _Loop:
    """The state of one execution of an ActiveLearning pipeline."""

    def __init__(self, pipeline: ActiveLearning, session: Session, database: Database, space: ParameterSpace,
                 seed: int, rounds: list[RoundRecord]) -> None:
        self.p, self.session, self.database, self.space, self.seed = pipeline, session, database, space, seed
        self.rounds = rounds
        self.runner: Any = None
        self.started = time.perf_counter()
        self.members: list[Path] = []
        self._backends: list[Any] | None = None

    def close(self) -> None:
        try:
            if self.runner is not None:
                self.runner.close()
        finally:
            self.database.close()

    def stored(self, mode: str) -> int:
        return self.database.count(mode) if mode in self.database.modes else 0

    def loop(self) -> None:
        p = self.p
        if self.stored("training") == 0:
            self.simulate("training", self.initial_design(), self.stored("training"))
        missing = p.validation_samples - self.stored("validation")
        if missing > 0:
            first = self.stored("validation")
            validation = build_sampler("ActiveLearning", "random", self.space, sampler_seed(self.seed, MODE_STREAMS["validation"]), None)
            validation.restore({"position": first})
            self.simulate("validation", ask_checked(validation, "random", self.space, missing), first)
        while True:
            round_started = time.perf_counter()
            number = len(self.rounds)
            self.train(number)
            spent = self.stored("training")
            record = RoundRecord(number, spent, self.validation_error(), 0.0, scoring=p.scoring)
            remaining = p.max_simulations - spent
            out_of_time = p.max_seconds is not None and time.perf_counter() - self.started >= p.max_seconds
            if remaining > 0 and not out_of_time:
                picked, scores = self.pick(number, min(p.batch_size, remaining))
                self.simulate("training", picked, spent)
                record.picked, record.scores = picked.tolist(), scores.tolist()
            record.seconds = time.perf_counter() - round_started
            self.rounds.append(record)
            self.session.finish_run("started", rounds=[dataclasses.asdict(r) for r in self.rounds])
            if p.echo:
                print(record, flush=True)
            if not record.picked:
                return

    def initial_design(self) -> np.ndarray:
        p = self.p
        sampler = build_sampler("ActiveLearning", p.initial_sampler, self.space,
                                sampler_seed(self.seed, MODE_STREAMS["training"]), p.initial_samples)
        return ask_checked(sampler, p.initial_sampler, self.space, p.initial_samples)

    def simulate(self, mode: str, parameters: np.ndarray, first: int) -> None:
        """Run ``parameters`` as samples ``first ...`` of ``mode`` and store them (one batch fills every worker)."""
        ids = np.arange(first, first + len(parameters))
        batch = self.runner.produce(ids, MODE_STREAMS[mode], parameters=parameters)
        self.database.prepare(mode, {name: (a.dtype, a.shape[1:]) for name, a in batch.items()})
        self.database.record_parameter_space(self.space)
        self.database.append(mode, batch)

    # -- the ensemble --------------------------------------------------------------------

    def train(self, number: int) -> None:
        """Train every member on the stored samples (from its previous weights when ``warm_start``)."""
        from dpx.core.training import Training

        p = self.p
        self.database.commit()
        members = []
        for member in range(p.ensemble):
            config = p.network_config
            if p.warm_start and self.members:
                config = dataclasses.replace(config, network_dir=str(self.members[member]))
            training = Training(config, DatabaseConfig(existing_dir=str(self.session.path), normalize=True),
                                session_dir=str(self.session.path / "ensemble"), session_name=f"round{number:03d}_member{member}",
                                epoch_nb=p.epoch_nb, batch_nb=p.train_batch_nb, batch_size=p.train_batch_size, stats=(),
                                seed=sampler_seed(self.seed, 1000 + member), progress=p.progress or False)
            training.execute()
            members.append(training.session_path)
        self.members, self._backends = members, None

    def backends(self) -> list[Any]:
        """The members trained this round, loaded once."""
        from dpx.core.network import find_trained_network
        from dpx.core.predictor import load_network

        if self._backends is None:
            config = self.p.network_config
            self._backends = [load_network(config, find_trained_network(config, member))[0] for member in self.members]
        return self._backends

    def inputs(self, parameters: np.ndarray) -> dict[str, np.ndarray]:
        return {PARAMETERS_FIELD: parameters.astype(self.p.network_config.data_type)}

    def predictions(self, parameters: np.ndarray) -> np.ndarray:
        """Every member's predictions of ``parameters``: ``(members, n, outputs)``."""
        return np.stack([flat_outputs(backend.predict(self.inputs(parameters)), len(parameters))
                         for backend in self.backends()])

    def dropout_predictions(self, parameters: np.ndarray, seed: int) -> np.ndarray:
        """``mc_samples`` predictions of ``parameters`` with the network's dropout on: ``(mc_samples, n, outputs)``."""
        (backend,) = self.backends()
        predicted = backend.predict_with_dropout(self.inputs(parameters), self.p.mc_samples, seed=seed)
        return flat_outputs(predicted, len(parameters), self.p.mc_samples)

    def disagreement(self, parameters: np.ndarray, number: int) -> np.ndarray:
        """The spread (standard deviation) of the ensemble's, or of the dropout passes', predictions at each
        vector, averaged over the outputs; chunked, so memory stays bounded whatever the pool."""
        scores = np.empty(len(parameters))
        mc_dropout = self.p.scoring == "mc_dropout"
        size = max(1, SCORE_CHUNK // self.p.mc_samples) if mc_dropout else SCORE_CHUNK
        round_seed = sampler_seed(self.seed, 20_000 + number)
        for start in range(0, len(parameters), size):
            chunk = parameters[start:start + size]
            if mc_dropout:
                spread = self.dropout_predictions(chunk, sampler_seed(round_seed, start))
            else:
                spread = self.predictions(chunk)
            scores[start:start + size] = spread.std(axis=0).mean(axis=1)
        return scores

    def validation_error(self) -> float | None:
        """The root mean square error of the ensemble's mean (MC dropout: of the network, dropout off) on the
        held-out validation samples."""
        if not self.stored("validation"):
            return None
        data = self.database.read("validation", [PARAMETERS_FIELD, *self.p.network_config.target_fields])
        truth = np.concatenate([data[n].reshape(len(data[n]), -1) for n in self.p.network_config.target_fields], axis=1)
        mean = self.predictions(data[PARAMETERS_FIELD]).mean(axis=0)
        return float(np.sqrt(np.mean((mean - truth) ** 2)))

    # -- picking --------------------------------------------------------------------------

    def pick(self, number: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` vectors of a fresh pool, by score damped near those already picked."""
        p = self.p
        pool_sampler = build_sampler("ActiveLearning", p.pool_sampler, self.space,
                                     sampler_seed(self.seed, 10_000 + number), p.pool_size)
        pool = ask_checked(pool_sampler, p.pool_sampler, self.space, p.pool_size)
        scores = self.disagreement(pool, number)
        pool_sampler.tell(pool, scores)
        chosen = pick_diverse(self.space.to_unit(pool), scores, count, p.diversity)
        return pool[chosen], scores[chosen]


def flat_outputs(predicted: dict[str, np.ndarray], count: int, passes: int | None = None) -> np.ndarray:
    """A backend's predictions of ``count`` vectors, every target field flattened side by side:
    ``(count, outputs)``, or ``(passes, count, outputs)`` for stacked dropout passes."""
    lead = (count,) if passes is None else (passes, count)
    return np.concatenate([np.asarray(a).reshape(*lead, -1) for a in predicted.values()], axis=-1)


def pick_diverse(unit: np.ndarray, scores: np.ndarray, count: int, diversity: float) -> np.ndarray:
    """Indices of ``count`` rows picked greedily by score, each pick multiplying its neighbours' scores by
    ``1 - exp(-(d / r)^2)`` (``d`` the distance in the unit cube, ``r = diversity * count^(-1/dims) / 2``,
    about the spacing of ``count`` points filling the cube): a batch covers several uncertain regions
    instead of piling into the most uncertain one."""
    count = min(count, len(scores))
    damped = np.asarray(scores, dtype=np.float64).copy()
    radius = diversity * 0.5 * count ** (-1.0 / unit.shape[1])
    chosen: list[int] = []
    for _ in range(count):
        best = int(np.argmax(damped))
        chosen.append(best)
        if radius > 0:
            distance2 = ((unit - unit[best]) ** 2).sum(axis=1)
            damped *= 1.0 - np.exp(-distance2 / radius**2)
        damped[best] = -np.inf
    return np.array(chosen, dtype=np.int64)
