"""``SymbolicMoE``: the one entry point to the method (a pool, its skill profiles, a task's choices)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Generic, TypeVar, cast, overload

from .cluster.live import with_discovered_devices
from .config import profile as machine_profile
from .config.pool import Config
from .config.presets import Preset
from .config.presets import preset as get_preset
from .execution import RunOptions
from .execution.calibration import observe
from .execution.launch import Launch, stage_engine
from .execution.prediction import RunPrediction
from .execution.report import RunReport
from .generation import Clock, Sampling
from .method.datasets import Question, bundled
from .method.keywords import annotate
from .method.matching import Embedder, match_keywords
from .method.routing import Assignment, Profiles, route
from .models.fetch import check_models, provide
from .pipeline import Baseline, EngineFactory, RunResult, RunSettings, Task, forecast, run_pipeline
from .planning.plan import Plan
from .planning.planner import plan
from .store import Store

__all__ = ["SymbolicMoE"]

log = logging.getLogger(__name__)


def profile_file(cfg: Config) -> str:
    """The machine profile file this machine's runs of ``cfg`` read and add to."""
    return str(machine_profile.profile_path(machine_profile.machine_key(machine_profile.machine(cfg.engine.platform))))


def observe_or_warn(cfg: Config, report: RunReport, store: Store) -> None:
    """Add a finished run to this machine's profile; a failure (unreadable profile, disk full) costs
    one warning line naming the file, never the run's results."""
    try:
        observe(cfg, report, store)
    except (OSError, ValueError) as e:  # SymoeError is a ValueError
        log.warning("this run was not added to the machine profile %s: %s", profile_file(cfg), e)


T = TypeVar("T")


class _Setting(Generic[T]):
    """A field of :class:`SymbolicMoE`'s frozen settings, read and assigned by name; assigning
    rebuilds the settings (checked again, as when made)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Setting[T]: ...
    @overload
    def __get__(self, obj: SymbolicMoE, owner: type | None = None) -> T: ...
    def __get__(self, obj: SymbolicMoE | None, owner: type | None = None) -> T | _Setting[T]:
        return self if obj is None else cast(T, getattr(obj.settings, self.name))

    def __set__(self, obj: SymbolicMoE, v: T) -> None:
        fields: dict[str, object] = {self.name: v}
        obj.settings = replace(obj.settings, **fields)  # type: ignore[arg-type]  # one field, by name


class SymbolicMoE:
    """Symbolic Mixture-of-Experts over a pool: keywords -> routing -> plan -> experts -> aggregation.

    >>> moe = SymbolicMoE.from_bundled("tiny")
    >>> result = moe.run(questions)            # every generation lands in the store as it finishes
    >>> result.report.accuracy

    ``k`` experts per question, routed with ``seed``; ``preset`` "symoe" or "reference" (the
    authors' code's choices); ``sampling`` defaults to the paper's (T=0.7) with the config's
    ``[engine] max_tokens``; ``settings``: all of these at once (:class:`RunSettings`, as ``symoe
    run`` makes them), instead of the separate arguments. Each is also an attribute, and assigning one
    (``moe.k = 5``) rebuilds the frozen ``settings``, checked as when made. ``engines``/``clock`` replace the engines
    :mod:`symoe.execution.launch` picks (tests, what-ifs); ``launch`` with a ``fake`` clock: every engine of
    the run, the keyword stage's too, is the cost model's fake (``symoe run --fake``: load tests).
    Either way the config's figures are used, and the run is not added to the machine profile.
    """

    def __init__(self, pool: Config | str | Path, profiles: Profiles | str | Path, task: Task | str | Path, *,
                 store: str | Path = "runs/store.sqlite", k: int = 3, seed: int = 0, preset: str = "symoe",
                 rare_threshold: float | None = None, similarity_floor: float | None = None,
                 sampling: Sampling | None = None, options: RunOptions = RunOptions(),
                 settings: RunSettings | None = None, engines: EngineFactory | None = None, clock: Clock | None = None,
                 launch: Launch = Launch()):
        self.config = pool if isinstance(pool, Config) else Config.load(pool)
        self.launch = launch
        self.simulated = engines is not None or launch.fake is not None  # no machine's figures, no real engine
        if self.config.cluster is not None and self.config.cluster.discover and not self.simulated:
            self.config = with_discovered_devices(self.config)  # plans over the running cluster's devices
        self.profiles = profiles if isinstance(profiles, Profiles) else Profiles.from_json(profiles)
        self.task = task if isinstance(task, Task) else Task.from_json(task)
        self.store_path = Path(store)
        if settings is None:
            settings = RunSettings.of(self.config, k=k, seed=seed, preset=preset, rare_threshold=rare_threshold,
                                      similarity_floor=similarity_floor, sampling=sampling, options=options)
        elif (k, seed, preset, rare_threshold, similarity_floor, sampling, options) != (3, 0, "symoe", None, None, None,
                                                                                        RunOptions()):
            raise TypeError("SymbolicMoE: give settings or k, seed, preset, rare_threshold, similarity_floor, sampling "
                            "and options, not both")
        self.settings = settings
        self.engines, self.clock = engines, clock
        self._forecast: tuple[object, RunPrediction] | None = None  # made by forecast(), for the next run()
        self._pool = self.config  # as given (devices discovered): what the machine profile is applied to
        self._apply_profile()

    def _apply_profile(self) -> None:
        """``config``: the pool with this machine's measured figures where this machine runs it,
        output lengths capped at the sampling's limits; ``cost_note`` says which figures are whose."""
        given = "engines given" if self.engines is not None else "fake engine"
        self.config, self.cost_note = self._pool, f"cost figures: the config's ({given})"
        if not self.simulated and self._pool.cluster is not None:  # Ray devices elsewhere: none of this machine's
            self.cost_note = ("cost figures: all from the config (a [cluster] pool: this machine's profile is not "
                              "applied to its devices, and cluster runs are not recorded into it)")
        elif not self.simulated:  # this machine's engines: its measured figures, output lengths capped at the run's
            sp = self.settings.sampling
            try:
                self.config, self.cost_note = machine_profile.apply(self._pool, sp.max_tokens, sp.aggregate_max_tokens)
            except (OSError, ValueError) as e:  # an unreadable profile: one warning, the config's figures
                where = profile_file(self._pool)
                log.warning("machine profile %s not used: %s", where, e)
                self.cost_note = f"cost figures: all from the config (the machine profile {where} is unreadable)"

    # The settings by name; assigning one rebuilds the frozen settings (checked again, as when made).
    k = _Setting[int]()  # Experts per question.
    seed = _Setting[int]()  # The routing seed (the sampling's seed is its own: set ``sampling``).
    rare_threshold = _Setting[float]()  # The rare-expert filter share (the preset's unless given).
    similarity_floor = _Setting[float | None]()  # Test keywords matched below this are dropped.
    options = _Setting[RunOptions]()  # Time and fault options of the runs.

    @property
    def preset(self) -> Preset:
        """The resolved preset (set by name or :class:`Preset`; ``rare_threshold`` stays as set)."""
        return self.settings.preset

    @preset.setter
    def preset(self, v: Preset | str) -> None:
        self.settings = replace(self.settings, preset=get_preset(v) if isinstance(v, str) else v)

    @property
    def sampling(self) -> Sampling:
        """The sampling of every generation (set: the pool's lengths capped at its new limits again)."""
        return self.settings.sampling

    @sampling.setter
    def sampling(self, v: Sampling) -> None:
        self.settings = replace(self.settings, sampling=v)
        self._apply_profile()

    @classmethod
    def from_bundled(cls, name: str = "tiny", **kwargs: object) -> SymbolicMoE:
        """The bundled pool ``name`` with its bundled profiles and task (only ``tiny`` ships both)."""
        if name != "tiny":
            raise ValueError(f"bundled profiles and task exist for the 'tiny' pool only, not {name!r}")
        return cls(name, bundled("tiny_profiles.json"), bundled("tiny_task.json"), **kwargs)  # type: ignore[arg-type]

    def keywords(self, questions: Sequence[Question], run_dir: str | Path = "runs/keywords") -> dict[str, list[str]]:
        """Skill keywords of each question, from the task's keyword model (stored; resumable)."""
        if self.launch.fake is None:  # the fake loads nothing
            provide(self.config, [self.task.keyword_model])
        check_models(self.config, [self.task.keyword_model])
        with Store(self.store_path) as store:
            return annotate(questions, self.config, self.task.keyword_model, store,
                            stage_engine(self.config, Path(run_dir) / "logs", self.launch), self.sampling,
                            progress=self.options.progress)

    def route(self, questions: Sequence[Question], keywords: Mapping[str, Sequence[str]] | None = None,
              embeddings: str | Path = "runs/embeddings.npz") -> Assignment:
        """Recruit ``k`` experts per question (keywords generated when not given)."""
        kws = keywords if keywords is not None else self.keywords(questions)
        matched = match_keywords({q.id: list(kws[q.id]) for q in questions}, self.profiles.vocabulary,
                                 Embedder(Path(embeddings)), self.similarity_floor)
        ids = [q.id for q in questions]
        return route(self.profiles, [matched[i] for i in ids], k=self.k, seed=self.seed,
                     rare_threshold=self.rare_threshold, question_ids=ids)

    def plan(self, assignment: Assignment, aggregate: bool = True, strategy: str = "symoe") -> Plan:
        """A load-once plan of ``assignment`` on the pool's devices (with the task's aggregator)."""
        return plan(assignment, self.config, aggregator=self.task.aggregator if aggregate else None,
                    strategy=strategy)  # type: ignore[arg-type]

    def forecast(self, questions: Sequence[Question], out_dir: str | Path = "runs/default") -> RunPrediction:
        """The run of ``questions`` into ``out_dir`` predicted before anything loads; the next
        :meth:`run` of the same questions, folder and settings reuses it (planned once)."""
        with Store(self.store_path) as store:
            pred = forecast(questions, self.config, self.profiles, self.task, store, out_dir, self.settings)
        self._forecast = (self._forecast_key(questions, out_dir, self.settings), pred)
        return pred

    def _forecast_key(self, questions: Sequence[Question], out_dir: str | Path, settings: RunSettings) -> object:
        return [(q.id, q.text_hash) for q in questions], Path(out_dir), settings, self.config

    def run(self, questions: Sequence[Question], out_dir: str | Path = "runs/default", baseline: Baseline | None = None,
            skip_agreed: bool | None = None, optimize_s: float | None = None) -> RunResult:
        """The whole method (or a ``baseline``) on ``questions``; results, plan and logs in ``out_dir``.
        ``optimize_s``: the plan's polish budget (``plan()``'s; 0: the heuristic plan alone). These
        three, when given, replace the settings' own for this run (None: the settings' value)."""
        s = self.settings
        settings = replace(s, baseline=s.baseline if baseline is None else baseline,
                           skip_agreed=s.skip_agreed if skip_agreed is None else skip_agreed,
                           optimize_s=s.optimize_s if optimize_s is None else optimize_s)
        made, self._forecast = self._forecast, None  # a forecast is used once, by the run it describes
        predicted = made[1] if made is not None and made[0] == self._forecast_key(questions, out_dir, settings) else None
        if self.launch.fake is None:  # the fake loads nothing
            provide(self.config, self.config.names)
        with Store(self.store_path) as store:
            res = run_pipeline(questions, self.config, self.profiles, self.task, store, out_dir, settings, self.engines,
                               self.clock, predicted, self.launch)
            if not self.simulated and self.config.cluster is None:  # this machine's next prediction uses it
                observe_or_warn(self.config, res.report, store)
        return res
