"""Load-once execution plans, their cost model and simulator (over the C++ core).

Every time a plan or timeline shows is a *prediction* of the cost model, never a measurement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core
from ..config.pool import Config
from ..errors import SymoeError
from . import checks as plan_checks
from . import endpoints as endpoint_plan
from .steps import ARRAY_DTYPES, ROLES, STEP_KINDS, PlanArrays, Role, StepKind

__all__ = ["Role", "StepKind", "Plan", "PlanArrays", "Timeline", "simulate", "save_picture", "STEP_KINDS", "ROLES"]


@dataclass
class Timeline:
    """Predicted (simulated) start/end of every step; not a measurement."""

    start: np.ndarray
    end: np.ndarray
    makespan: float   # the last run's end: when the last result exists
    busy: np.ndarray  # per device, seconds generating
    loads: int
    bytes_loaded: float
    finish: float = float("nan")  # the last step's end: trailing unloads, parks and pauses delay no result

    @property
    def utilisation(self) -> np.ndarray:
        """Per device, the share of the makespan it is busy."""
        return self.busy / self.makespan if self.makespan > 0 else np.zeros_like(self.busy)



@dataclass
class Plan:
    """Per-device ordered steps for an assignment on a config, with predicted timing.

    Expert runs list items ``question * k + slot``; aggregation runs list questions.
    """

    strategy: str
    config: Config
    experts: np.ndarray             # N x k model ids (the assignment)
    aggregator: np.ndarray | None   # N model ids, -1 none
    arrays: PlanArrays
    timeline: Timeline | None = None
    lower_bound: float = float("nan")
    question_ids: tuple[str, ...] = ()
    question_hashes: tuple[str, ...] = ()  # of each question's text (``Question.text_hash``); run-plan checks them

    @property
    def n_steps(self) -> int:
        """Number of steps."""
        return self.arrays.n_steps

    @property
    def k(self) -> int:
        """Experts per question."""
        return int(self.experts.shape[1])

    def _core_inputs(self) -> dict[str, Any]:
        return dict(experts=self.experts, aggregator=self.aggregator, **self.config.core_args())

    def with_config(self, cfg: Config) -> Plan:
        """The same steps with another config's engine settings and paths (same models and devices)."""
        if len(cfg.devices) != len(self.config.devices) and endpoint_plan.endpoint_models(cfg):
            cfg = endpoint_plan.with_endpoint_devices(cfg)  # a pool file lists only the local devices
        if cfg.names != self.config.names or len(cfg.devices) != len(self.config.devices):
            raise ValueError("config does not match the plan: models or device count differ")
        q = replace(self, config=cfg)
        q.timeline = simulate(q)
        return q

    def validate(self) -> None:
        """Raise ValueError naming the first violated invariant (the core checks them all before
        it simulates), then check the simulated timing: aggregation after its experts."""
        t = simulate(self)
        a = self.arrays
        done = np.zeros(len(self.experts))
        for s in a.runs(Role.EXPERT):
            np.maximum.at(done, a.items_of(s) // self.k, t.end[s])
        for s in a.runs(Role.AGGREGATE):
            q = a.items_of(s)
            if (done[q] > t.start[s] + 1e-9).any():
                raise ValueError(f"step {s}: aggregation starts before its questions' experts finish")

    @property
    def makespan(self) -> float:
        """Predicted seconds until the last result."""
        return self.timeline.makespan if self.timeline else float("nan")

    @property
    def gap(self) -> float:
        """Relative distance of the predicted makespan above the lower bound."""
        return self.makespan / self.lower_bound - 1.0

    def steps(self) -> list[dict[str, Any]]:
        """Readable steps (device order preserved)."""
        a, names = self.arrays, self.config.names
        out = []
        for s in range(self.n_steps):
            kind = a.kind_of(s)
            st: dict[str, Any] = {"kind": kind.label, "device": int(a.device[s])}
            if a.model[s] >= 0:
                st["model"] = names[a.model[s]]
            if a.tp[s] != 1:
                st["tp"] = int(a.tp[s])
            if kind == StepKind.PAUSE:
                st["seconds"] = float(a.seconds[s])
            if kind == StepKind.RUN:
                role = a.role_of(s)
                st["role"] = role.label
                it = a.items_of(s)
                if role == Role.EXPERT:
                    st["questions"] = (it // self.k).tolist()
                    st["slots"] = (it % self.k).tolist()
                else:
                    st["questions"] = it.tolist()
            if self.timeline is not None:
                st["predicted_start"] = float(self.timeline.start[s])
                st["predicted_end"] = float(self.timeline.end[s])
            out.append(st)
        return out

    def metrics(self) -> dict[str, Any]:
        """Loads, bytes loaded, predicted makespan, lower bound, gap and utilisation."""
        t = self.timeline
        return {
            "strategy": self.strategy,
            "devices": len(self.config.devices),
            "questions": int(len(self.experts)),
            "steps": self.n_steps,
            "loads": t.loads if t else None,
            "bytes_loaded": t.bytes_loaded if t else None,
            "predicted_makespan_s": self.makespan,
            "predicted_finish_s": t.finish if t else None,
            "lower_bound_s": self.lower_bound,
            "gap": self.gap,
            "utilisation": t.utilisation.tolist() if t else None,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The plan as JSON (written to ``path`` if given)."""
        doc = {
            "symoe": "plan", "version": 1, "strategy": self.strategy, "note": "times are predictions of the cost model",
            "config": self.config.to_dict(), "k": self.k, "question_ids": list(self.question_ids),
            "question_hashes": list(self.question_hashes), "experts": self.experts.tolist(),
            "aggregator": None if self.aggregator is None else self.aggregator.tolist(),
            "arrays": {k: v.tolist() for k, v in self.arrays.as_dict().items()},
            "metrics": self.metrics(),
            "steps": self.steps(),
        }
        text = json.dumps(doc)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> Plan:
        """Read a plan file (validated)."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"cannot read plan {path}: {e.strerror}") from e
        return cls.from_json_text(text, str(path))

    @classmethod
    def from_json_text(cls, text: str, source: str = "plan") -> Plan:
        """Parse plan JSON (validated); ``source`` names it in errors."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("symoe") != "plan":
            raise ValueError(f"{source} is not a symoe plan")
        for key in ("strategy", "config", "k", "experts", "aggregator", "arrays"):
            if key not in doc:
                raise SymoeError(f"plan {source}: missing key {key!r}")
        missing = [n for n in ARRAY_DTYPES if not isinstance(doc["arrays"], dict) or n not in doc["arrays"]]
        if missing:
            raise SymoeError(f"plan {source}: arrays: missing key {missing[0]!r}")
        ids, hashes = tuple(doc.get("question_ids", ())), tuple(doc.get("question_hashes", ()))
        try:
            cfg = Config.from_plain(doc["config"])
            k = int(doc["k"])
            plan_checks.check_plan_shape(source, k, doc["experts"], hashes)  # before a reshape can fail on it
            experts = np.asarray(doc["experts"], dtype=np.int64).reshape(-1, k)
            agg = None if doc["aggregator"] is None else np.asarray(doc["aggregator"], dtype=np.int64)
            arrays = PlanArrays.of(doc["arrays"])
        except KeyError as e:  # only the config's keys are left unchecked
            raise SymoeError(f"plan {source}: config: missing key {e.args[0]!r}") from e
        except (TypeError, ValueError, OverflowError) as e:  # wrong shapes or types in a hand-edited plan
            raise SymoeError(f"plan {source}: {type(e).__name__}: {e}") from e
        p = cls(doc["strategy"], cfg, experts, agg, arrays, question_ids=ids, question_hashes=hashes)
        p.timeline = simulate(p)
        p.lower_bound = _core.lower_bound(**p._core_inputs())
        # A bound the polish proved (above the core's) is kept; none can exceed the plan's makespan.
        proven = doc.get("metrics", {}).get("lower_bound_s") if isinstance(doc.get("metrics"), dict) else None
        if isinstance(proven, (int, float)) and math.isfinite(proven) and proven > p.lower_bound:
            if proven > p.makespan * (1 + 1e-9):
                raise SymoeError(f"plan {source}: metrics.lower_bound_s {proven} exceeds the predicted makespan "
                                 f"{p.makespan}")
            p.lower_bound = float(proven)
        return p


def simulate(p: Plan, config: Config | None = None) -> Timeline:
    """Predict the plan's timeline, optionally under another config (what-if: sleep mode,
    bandwidth, throughput). The device count must match the plan's."""
    cfg = config or p.config
    r = _core.simulate({"devices": len(cfg.devices), **p.arrays.as_dict()}, experts=p.experts, aggregator=p.aggregator,
                       **cfg.core_args())
    start, end = r["start"], r["end"]
    wait = float(cfg.engine.worker_start_s) if len(start) else 0.0
    if wait > 0:
        # Every device's worker starts at once, so the whole timeline moves by the start; each device's
        # first load begins at 0 and takes it in, as a run measures it (its first load waits for it).
        start, end = start + wait, end + wait
        devices = p.arrays.device
        for d in np.unique(devices):
            first = int(np.flatnonzero(devices == d)[0])
            if p.arrays.kind_of(first) == StepKind.LOAD:
                start[first] = 0.0
    return Timeline(start, end, float(r["makespan"]) + wait, r["busy"], int(r["loads"]), float(r["bytes_loaded"]),
                    float(r["finish"]) + wait)


def save_picture(p: Plan, path: str | Path, title: str | None = None) -> None:
    """Timeline PNG of the plan's predicted run (one lane pair per device)."""
    from ..picture import draw_timeline

    if p.timeline is None:
        p.timeline = simulate(p)
    kinds = [STEP_KINDS[k] for k in p.arrays.kind]  # the picture's vocabulary: labels
    draw_timeline(path, p.config.names, p.arrays.device, p.arrays.model, kinds, p.timeline.start,
                  p.timeline.end, title or f"{p.strategy} plan: predicted makespan {p.makespan:,.0f} s (cost model)")
