"""Load-once execution plans, their cost model and simulator (over the C++ core).

Every time a plan or timeline shows is a *prediction* of the cost model, never a measurement.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import _core
from .errors import SymoeError
from .routing import Assignment

__all__ = ["Role", "StepKind", "ModelSpec", "Device", "Tokens", "Config", "Plan", "Timeline", "plan", "simulate", "save_picture", "STEP_KINDS"]

class StepKind(IntEnum):
    """What a plan step does (the values of ``cpp/plan.hpp``'s ``StepKind``)."""

    LOAD = 0
    RUN = 1
    UNLOAD = 2
    PARK = 3
    WAKE = 4
    PAUSE = 5

    @property
    def label(self) -> str:
        return self.name.lower()


class Role(IntEnum):
    """Whose work a run step does (the values of ``cpp/plan.hpp``'s ``Role``)."""

    EXPERT = 0
    AGGREGATE = 1

    @property
    def label(self) -> str:
        return self.name.lower()


STEP_KINDS = tuple(k.label for k in StepKind)  # step labels by value, as run logs and plan JSON write them
ROLES = tuple(r.label for r in Role)
GB = 1e9


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool and its cost-model figures.

    ``load_s`` is a cold start (read weights + engine init); ``park_s``/``wake_s`` are the
    sleep-mode offload to host memory and back (``park_s < 0``: not supported). Throughputs are
    tokens per second: ``decode_tps`` and ``prefill_tps`` for a saturated batch, ``stream_tps``
    for one sequence alone (no batch finishes faster than its longest sequence).
    ``max_tokens``, ``max_model_len`` and ``trust_remote_code`` are engine settings of this model
    (None: the run's and the ``[engine]`` table's); they are not cost figures.
    """

    name: str
    weight_bytes: float
    path: str | None = None
    extra_bytes: float = 0.0
    load_s: float = 0.0
    unload_s: float = 0.0
    park_s: float = -1.0
    wake_s: float = 0.0
    overhead_s: float = 0.0
    prefill_tps: float = 10000.0
    decode_tps: float = 2000.0
    stream_tps: float = 50.0
    chat: bool = True  # instruct model with a chat template (False: plain completion)
    max_tokens: int | None = None      # new tokens per answer (reasoning models write far more)
    max_model_len: int | None = None   # context length the engine is started with
    trust_remote_code: bool = False    # the model's own code from its folder (GLM-4, InternLM3)

    @property
    def resident_bytes(self) -> float:
        return self.weight_bytes + self.extra_bytes

    def run_seconds(self, n: int, prompt_tokens: float, output_tokens: float, tp: int = 1, tp_eff: float = 0.0) -> float:
        """Predicted time of one batch of ``n`` requests (the core's ``run_seconds``): throughput
        bound, but never faster than one sequence decoded alone."""
        if n <= 0:
            return 0.0
        work = n * (prompt_tokens / self.prefill_tps + output_tokens / self.decode_tps)
        return self.overhead_s + max(work, output_tokens / self.stream_tps) / (1.0 + (tp - 1) * tp_eff)


@dataclass(frozen=True)
class Device:
    memory_bytes: float
    overlap_load: bool = True  # may load a model while another generates (separate engines)
    host_bytes: float = 0.0    # host memory for weights parked by sleep mode


@dataclass(frozen=True)
class Tokens:
    """Expected tokens per request, by role."""

    expert_prompt: float = 300.0
    expert_output: float = 600.0
    aggregate_prompt: float = 2200.0
    aggregate_output: float = 600.0

    def of(self, role: str) -> tuple[float, float]:
        """(prompt, output) tokens of a request of ``role`` (aggregations and their benchmark vs the rest)."""
        if role in ("aggregate", "aggregator-benchmark"):
            return self.aggregate_prompt, self.aggregate_output
        return self.expert_prompt, self.expert_output


@dataclass(frozen=True)
class Config:
    """A pool, the devices it runs on, and the workload's token figures."""

    models: tuple[ModelSpec, ...]
    devices: tuple[Device, ...]
    tokens: Tokens = Tokens()
    tp_efficiency: float = 0.5  # reference schedule: speed-up of tp GPUs = 1 + (tp-1)*eff
    pause_s: float = 10.0       # reference schedule: sleep after each expert
    meta: Mapping[str, Any] = field(default_factory=dict)
    engine: Mapping[str, Any] = field(default_factory=dict)  # platform, dtype, max_model_len, kv_cache_gb, threads

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names in the pool must be unique")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._index)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {m.name: i for i, m in enumerate(self.models)}

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(f"model {name!r} is not in the pool ({', '.join(self.names)})") from None

    def model(self, name: str) -> ModelSpec:
        return self.models[self.index(name)]

    def with_devices(self, count: int | None = None, memory_gb: float | None = None,
                     overlap_load: bool | None = None, host_memory_gb: float | None = None) -> Config:
        """The same pool on ``count`` identical devices (what-if: more GPUs, less memory, ...)."""
        base = self.devices[0] if self.devices else Device(80 * GB)
        n = len(self.devices) if count is None else count
        if n < 1:
            raise ValueError(f"device count must be >= 1, got {n}")
        dev = Device(base.memory_bytes if memory_gb is None else memory_gb * GB,
                     base.overlap_load if overlap_load is None else overlap_load,
                     base.host_bytes if host_memory_gb is None else host_memory_gb * GB)
        return replace(self, devices=tuple([dev] * n))

    def with_sleep(self, enabled: bool, h2d_bandwidth_gbps: float = 25.0) -> Config:
        """What-if: sleep mode on (park/wake over host<->device copies) or off."""
        bw = h2d_bandwidth_gbps * GB
        models = tuple(replace(m, park_s=m.weight_bytes / bw if enabled else -1.0,
                               wake_s=m.weight_bytes / bw if enabled else 0.0) for m in self.models)
        return replace(self, models=models)

    @classmethod
    def bundled(cls, name: str) -> Config:
        """A config shipped with the package (``paper16``, ...)."""
        return cls.from_toml(bundled_config_path(name))

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Read a pool config; see ``configs/`` in the package for documented examples."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise SymoeError(f"cannot read pool config {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise SymoeError(f"pool config {path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
        except tomllib.TOMLDecodeError as e:
            raise SymoeError(f"pool config {path} is not valid TOML: {e}") from e
        return cls.from_dict(data, base=Path(path).parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None, source: str = "config") -> Config:
        known_top = {"defaults", "model", "devices", "tokens", "reference", "meta", "engine"}
        _no_unknown(data, known_top, source)
        d = _table(data, "defaults", source)
        _no_unknown(d, {"load_bandwidth_gbps", "init_s", "unload_s", "h2d_bandwidth_gbps", "sleep", "overhead_s",
                        "prefill_tps", "decode_tps", "stream_tps", "extra_fraction", "extra_gb", "dtype_bytes"},
                    f"{source} [defaults]")
        models = []
        raw_models = data.get("model", [])
        if not isinstance(raw_models, list) or not raw_models:
            raise ValueError(f"{source}: needs at least one [[model]] table")
        spec_keys = {f.name for f in fields(ModelSpec)}
        for i, m in enumerate(raw_models):
            where = f"{source} [[model]] #{i + 1}"
            _no_unknown(m, spec_keys | {"params_b", "weight_gb", "extra_gb", "extra_fraction", "dtype_bytes",
                                        "load_bandwidth_gbps", "init_s", "h2d_bandwidth_gbps", "sleep"}, where)
            if "name" not in m:
                raise ValueError(f"{where}: missing 'name'")
            g = {**d, **m}

            def num(key: str, default: float | None = None, positive: bool = False, m=m, where=where) -> float:
                """The model's value, else the [defaults] one; a bad value is named in its own table."""
                if key in m:
                    return _number(m, key, default, where, positive)
                return _number(d, key, default, f"{source} [defaults]", positive)

            if "weight_bytes" in m:
                wb = num("weight_bytes")
            elif "weight_gb" in m:
                wb = num("weight_gb") * GB
            elif "params_b" in g:
                wb = num("params_b") * 1e9 * num("dtype_bytes", 2)
            else:
                raise ValueError(f"{where} ({m['name']}): give weight_bytes, weight_gb or params_b")
            if "extra_bytes" in m:
                extra = num("extra_bytes")
            else:
                extra = num("extra_gb") * GB if "extra_gb" in g else wb * num("extra_fraction", 0.0)
            bw = num("load_bandwidth_gbps", 2.0, positive=True) * GB
            h2d = num("h2d_bandwidth_gbps", 25.0, positive=True) * GB
            sleep = _flag(m, "sleep", None, where)
            sleep = _flag(d, "sleep", False, f"{source} [defaults]") if sleep is None else sleep
            path = m.get("path")
            if path is not None and not isinstance(path, str):
                raise SymoeError(f"{where}: path must be a string, got {path!r}")
            if path and "{cache}" in path:
                from .models import cache_dir

                path = path.replace("{cache}", str(cache_dir()))
            if path and base is not None and not Path(path).is_absolute() and (base / path).exists():
                path = str((base / path).resolve())
            spec = ModelSpec(
                name=str(m["name"]), path=path, weight_bytes=wb, extra_bytes=extra,
                load_s=num("load_s", num("init_s", 0.0) + wb / bw),
                unload_s=num("unload_s", 1.0),
                park_s=num("park_s", wb / h2d if sleep else -1.0),
                wake_s=num("wake_s", wb / h2d if sleep else 0.0),
                overhead_s=num("overhead_s", 0.0), prefill_tps=num("prefill_tps", 10000.0),
                decode_tps=num("decode_tps", 2000.0), stream_tps=num("stream_tps", 50.0),
                chat=_flag(m, "chat", True, where),
                max_tokens=_positive_int(m, "max_tokens", where), max_model_len=_positive_int(m, "max_model_len", where),
                trust_remote_code=_flag(m, "trust_remote_code", False, where),
            )
            for f in ("weight_bytes", "extra_bytes", "load_s", "unload_s", "wake_s", "overhead_s"):
                v = getattr(spec, f)
                if not math.isfinite(v) or v < 0:
                    raise ValueError(f"{where} ({spec.name}): {f} must be finite and >= 0, got {v}")
            for f in ("prefill_tps", "decode_tps", "stream_tps"):
                v = getattr(spec, f)
                if not math.isfinite(v) or v <= 0:
                    raise ValueError(f"{where} ({spec.name}): {f} must be positive, got {v}")
            models.append(spec)
        dw = f"{source} [devices]"
        dv = _table(data, "devices", source)
        _no_unknown(dv, {"count", "memory_gb", "overlap_load", "host_memory_gb"}, dw)
        count = _integer(dv, "count", 1, dw)
        if count < 1:
            raise ValueError(f"{dw}: count must be >= 1, got {count}")
        mem = _number(dv, "memory_gb", 80.0, dw, positive=True)
        host = _number(dv, "host_memory_gb", 0.0, dw)
        if host < 0:
            raise ValueError(f"{dw}: host_memory_gb must be >= 0, got {host}")
        devices = tuple(Device(mem * GB, _flag(dv, "overlap_load", True, dw), host * GB) for _ in range(count))
        tk = _table(data, "tokens", source)
        _no_unknown(tk, {f.name for f in fields(Tokens)}, f"{source} [tokens]")
        ref = _table(data, "reference", source)
        _no_unknown(ref, {"tp_efficiency", "pause_s"}, f"{source} [reference]")
        ew = f"{source} [engine]"
        eng = _table(data, "engine", source)
        _no_unknown(eng, {"platform", "dtype", "max_model_len", "kv_cache_gb", "threads", "enforce_eager", "max_tokens"},
                    ew)
        if eng.get("platform", "gpu") not in ("cpu", "gpu"):
            raise ValueError(f"{ew}: platform must be 'cpu' or 'gpu', got {eng['platform']!r}")
        # Checked here, not when an engine starts minutes into a run; defaults stay where they are used.
        for key in ("max_model_len", "max_tokens", "threads"):
            if key in eng and _integer(eng, key, None, ew) < (0 if key == "threads" else 1):
                raise SymoeError(f"{ew}: {key} must be >= {0 if key == 'threads' else 1}, got {eng[key]!r}")
        if "kv_cache_gb" in eng:
            _number(eng, "kv_cache_gb", None, ew, positive=True)
        if "enforce_eager" in eng:
            _flag(eng, "enforce_eager", None, ew)
        if not isinstance(eng.get("dtype", ""), str):
            raise SymoeError(f"{ew}: dtype must be a string, got {eng['dtype']!r}")
        tw = f"{source} [tokens]"
        return cls(tuple(models), devices, Tokens(**{k: _number(tk, k, None, tw) for k in tk}),
                   _number(ref, "tp_efficiency", 0.5, f"{source} [reference]"),
                   _number(ref, "pause_s", 10.0, f"{source} [reference]"), _table(data, "meta", source), eng)

    def to_toml(self) -> str:
        """Every figure explicit, so ``from_toml`` reads back the same config."""
        def val(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, float)):
                return repr(float(v)) if isinstance(v, float) else str(v)
            return json.dumps(str(v))

        d0 = self.devices[0]
        lines = ["[devices]", f"count = {len(self.devices)}", f"memory_gb = {d0.memory_bytes / GB!r}",
                 f"overlap_load = {val(d0.overlap_load)}", f"host_memory_gb = {d0.host_bytes / GB!r}", "", "[tokens]"]
        lines += [f"{k} = {v!r}" for k, v in asdict(self.tokens).items()]
        lines += ["", "[reference]", f"tp_efficiency = {self.tp_efficiency!r}", f"pause_s = {self.pause_s!r}"]
        if self.engine:
            lines += ["", "[engine]"] + [f"{k} = {val(v)}" for k, v in self.engine.items()]
        for m in self.models:
            lines += ["", "[[model]]"] + [f"{k} = {val(v)}" for k, v in asdict(m).items() if v is not None]
        return "\n".join(lines) + "\n"

    def cost_matrix(self) -> np.ndarray:
        cols = _core.COST_COLUMNS
        return np.array([[float(getattr(m, c)) for c in cols] for m in self.models], dtype=np.float64).reshape(-1, len(cols))

    def core_args(self) -> dict[str, Any]:
        t = self.tokens
        return dict(
            model_costs=self.cost_matrix(),
            device_memory=np.array([d.memory_bytes for d in self.devices], dtype=np.float64),
            device_overlap=np.array([d.overlap_load for d in self.devices], dtype=bool),
            device_host=np.array([d.host_bytes for d in self.devices], dtype=np.float64),
            tokens=np.array([t.expert_prompt, t.expert_output, t.aggregate_prompt, t.aggregate_output], dtype=np.float64),
            tp_efficiency=float(self.tp_efficiency),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"models": [asdict(m) for m in self.models], "devices": [asdict(d) for d in self.devices],
                "tokens": asdict(self.tokens), "tp_efficiency": self.tp_efficiency, "pause_s": self.pause_s,
                "engine": dict(self.engine)}

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> Config:
        return cls(tuple(ModelSpec(**m) for m in d["models"]), tuple(Device(**x) for x in d["devices"]),
                   Tokens(**d["tokens"]), d["tp_efficiency"], d["pause_s"], engine=d.get("engine", {}))


def bundled_config_path(name: str) -> Path:
    from importlib import resources

    p = Path(str(resources.files("symoe") / "configs" / f"{name}.toml"))
    if not p.exists():
        raise ValueError(f"no bundled config named {name!r}")
    return p


def _table(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    t = data.get(key, {})
    if not isinstance(t, Mapping):
        raise SymoeError(f"{source}: [{key}] must be a table, got {t!r}")
    return dict(t)


def _number(t: Mapping[str, Any], key: str, default: float | None, where: str, positive: bool = False) -> float:
    """A finite number (a positive one if asked); the error names the table, the key and the value."""
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or (positive and v <= 0):
        raise SymoeError(f"{where}: {key} must be a {'positive' if positive else 'finite'} number, got {v!r}")
    return float(v)


def _integer(t: Mapping[str, Any], key: str, default: int | None, where: str) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise SymoeError(f"{where}: {key} must be an integer, got {v!r}")
    return int(v)


def _positive_int(t: Mapping[str, Any], key: str, where: str) -> int | None:
    if key not in t:
        return None
    v = _integer(t, key, None, where)
    if v < 1:
        raise SymoeError(f"{where}: {key} must be >= 1, got {t[key]!r}")
    return v


def _flag(t: Mapping[str, Any], key: str, default: bool | None, where: str) -> bool | None:
    v = t.get(key, default)
    if v is not None and not isinstance(v, (bool, np.bool_)):  # bool("false") would be True
        raise SymoeError(f"{where}: {key} must be true or false, got {v!r}")
    return None if v is None else bool(v)


def _no_unknown(d: Mapping[str, Any], known: set[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a table")
    unknown = sorted(set(d) - known)
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {difflib.get_close_matches(u, known, 1)[0]!r}?)"
                 if difflib.get_close_matches(u, known, 1) else repr(u) for u in unknown]
        raise ValueError(f"{where}: unknown key {', '.join(hints)}")


@dataclass
class Timeline:
    """Predicted (simulated) start/end of every step; not a measurement."""

    start: np.ndarray
    end: np.ndarray
    makespan: float
    busy: np.ndarray  # per device, seconds generating
    loads: int
    bytes_loaded: float

    @property
    def utilisation(self) -> np.ndarray:
        return self.busy / self.makespan if self.makespan > 0 else np.zeros_like(self.busy)


_ARRAYS = ("kind", "role", "device", "model", "tp", "item_begin", "item_end", "seconds", "items")
_DTYPES = dict(kind=np.int8, role=np.int8, device=np.int32, model=np.int32, tp=np.int32,
               item_begin=np.int64, item_end=np.int64, seconds=np.float64, items=np.int64)


@dataclass
class Plan:
    """Per-device ordered steps for an assignment on a config, with predicted timing.

    Expert runs list items ``question * k + slot``; aggregation runs list questions.
    """

    strategy: str
    config: Config
    experts: np.ndarray             # N x k model ids (the assignment)
    aggregator: np.ndarray | None   # N model ids, -1 none
    arrays: dict[str, np.ndarray]
    timeline: Timeline | None = None
    lower_bound: float = float("nan")
    question_ids: tuple[str, ...] = ()
    question_hashes: tuple[str, ...] = ()  # of each question's text (``Question.text_hash``); run-plan checks them

    @property
    def n_steps(self) -> int:
        return int(len(self.arrays["kind"]))

    @property
    def k(self) -> int:
        return int(self.experts.shape[1])

    def _core_inputs(self) -> dict[str, Any]:
        return dict(experts=self.experts, aggregator=self.aggregator, **self.config.core_args())

    def validate(self) -> None:
        """Raise ValueError naming the first violated invariant (the core checks them all before
        it simulates), then check the simulated timing: aggregation after its experts."""
        t = simulate(self)
        a = self.arrays
        runs = np.flatnonzero(a["kind"] == StepKind.RUN)
        done = np.zeros(len(self.experts))
        for s in runs[a["role"][runs] == Role.EXPERT]:
            q = a["items"][a["item_begin"][s]:a["item_end"][s]] // self.k
            np.maximum.at(done, q, t.end[s])
        for s in runs[a["role"][runs] == Role.AGGREGATE]:
            q = a["items"][a["item_begin"][s]:a["item_end"][s]]
            if (done[q] > t.start[s] + 1e-9).any():
                raise ValueError(f"step {s}: aggregation starts before its questions' experts finish")

    @property
    def makespan(self) -> float:
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
            kind = STEP_KINDS[a["kind"][s]]
            st: dict[str, Any] = {"kind": kind, "device": int(a["device"][s])}
            if a["model"][s] >= 0:
                st["model"] = names[a["model"][s]]
            if a["tp"][s] != 1:
                st["tp"] = int(a["tp"][s])
            if kind == "pause":
                st["seconds"] = float(a["seconds"][s])
            if kind == "run":
                st["role"] = ROLES[a["role"][s]]
                it = a["items"][a["item_begin"][s]:a["item_end"][s]]
                if st["role"] == "expert":
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
        t = self.timeline
        return {
            "strategy": self.strategy,
            "devices": len(self.config.devices),
            "questions": int(len(self.experts)),
            "steps": self.n_steps,
            "loads": t.loads if t else None,
            "bytes_loaded": t.bytes_loaded if t else None,
            "predicted_makespan_s": self.makespan,
            "lower_bound_s": self.lower_bound,
            "gap": self.gap,
            "utilisation": t.utilisation.tolist() if t else None,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        doc = {
            "symoe": "plan", "version": 1, "strategy": self.strategy, "note": "times are predictions of the cost model",
            "config": self.config.to_dict(), "k": self.k, "question_ids": list(self.question_ids),
            "question_hashes": list(self.question_hashes), "experts": self.experts.tolist(),
            "aggregator": None if self.aggregator is None else self.aggregator.tolist(),
            "arrays": {k: self.arrays[k].tolist() for k in _ARRAYS},
            "metrics": self.metrics(),
            "steps": self.steps(),
        }
        text = json.dumps(doc)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"cannot read plan {path}: {e.strerror}") from e
        return cls.from_json_text(text, str(path))

    @classmethod
    def from_json_text(cls, text: str, source: str = "plan") -> Plan:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("symoe") != "plan":
            raise ValueError(f"{source} is not a symoe plan")
        for key in ("strategy", "config", "k", "experts", "aggregator", "arrays"):
            if key not in doc:
                raise SymoeError(f"plan {source}: missing key {key!r}")
        missing = [n for n in _ARRAYS if not isinstance(doc["arrays"], dict) or n not in doc["arrays"]]
        if missing:
            raise SymoeError(f"plan {source}: arrays: missing key {missing[0]!r}")
        try:
            cfg = Config.from_plain(doc["config"])
            k = int(doc["k"])
            experts = np.asarray(doc["experts"], dtype=np.int64).reshape(-1, k)
            agg = None if doc["aggregator"] is None else np.asarray(doc["aggregator"], dtype=np.int64)
            arrays = {name: np.asarray(doc["arrays"][name], dtype=_DTYPES[name]) for name in _ARRAYS}
        except KeyError as e:  # only the config's keys are left unchecked
            raise SymoeError(f"plan {source}: config: missing key {e.args[0]!r}") from e
        except (TypeError, ValueError, OverflowError) as e:  # wrong shapes or types in a hand-edited plan
            raise SymoeError(f"plan {source}: {type(e).__name__}: {e}") from e
        ids, hashes = tuple(doc.get("question_ids", ())), tuple(doc.get("question_hashes", ()))
        if hashes and (len(hashes) != len(experts) or not all(isinstance(h, str) for h in hashes)):
            raise SymoeError(f"plan {source}: question_hashes must be {len(experts)} strings, one per question")
        p = cls(doc["strategy"], cfg, experts, agg, arrays, question_ids=ids, question_hashes=hashes)
        p.timeline = simulate(p)
        p.lower_bound = _core.lower_bound(**p._core_inputs())
        return p


def _aggregator_array(aggregator: str | Sequence[str] | None, n: int, cfg: Config) -> np.ndarray | None:
    if aggregator is None:
        return None
    if isinstance(aggregator, str):
        return np.full(n, cfg.index(aggregator), dtype=np.int64)
    if len(aggregator) != n:
        raise ValueError(f"{len(aggregator)} aggregators for {n} questions")
    return np.array([cfg.index(a) if a is not None else -1 for a in aggregator], dtype=np.int64)


def plan(
    assignment: Assignment,
    config: Config,
    *,
    aggregator: str | Sequence[str] | None = None,
    strategy: Literal["symoe", "reference", "naive"] = "symoe",
    replicate: bool = True,
) -> Plan:
    """Plan the assignment's expert runs (and aggregation, if an aggregator is given) on ``config``.

    The assignment's model names are resolved in the pool by name; the returned plan carries its
    simulated timeline and the lower bound.
    """
    if len(assignment) == 0 or assignment.k == 0:
        raise ValueError("assignment is empty: nothing to plan")
    if not config.devices:
        raise ValueError("no devices: at least one device is needed")
    remap = np.array([config.index(m) for m in assignment.models], dtype=np.int64)
    experts = np.ascontiguousarray(remap[assignment.experts])
    agg = _aggregator_array(aggregator, len(assignment), config)
    args = dict(experts=experts, aggregator=agg, **config.core_args())
    arrays = _core.make_plan(**args, strategy=strategy, pause_s=float(config.pause_s), replicate=bool(replicate))
    arrays.pop("devices")
    p = Plan(strategy, config, experts, agg, arrays, question_ids=assignment.question_ids)
    p.timeline = simulate(p)
    p.lower_bound = _core.lower_bound(**args)
    return p


def simulate(p: Plan, config: Config | None = None) -> Timeline:
    """Predict the plan's timeline, optionally under another config (what-if: sleep mode,
    bandwidth, throughput). The device count must match the plan's."""
    cfg = config or p.config
    r = _core.simulate({"devices": len(cfg.devices), **p.arrays}, experts=p.experts, aggregator=p.aggregator,
                       **cfg.core_args())
    return Timeline(r["start"], r["end"], float(r["makespan"]), r["busy"], int(r["loads"]), float(r["bytes_loaded"]))


def save_picture(p: Plan, path: str | Path, title: str | None = None) -> None:
    """Timeline PNG of the plan's predicted run (one lane pair per device)."""
    from .picture import draw_timeline

    if p.timeline is None:
        p.timeline = simulate(p)
    kinds = [STEP_KINDS[k] for k in p.arrays["kind"]]
    draw_timeline(path, p.config.names, p.arrays["device"], p.arrays["model"], kinds, p.timeline.start,
                  p.timeline.end, title or f"{p.strategy} plan: predicted makespan {p.makespan:,.0f} s (cost model)")
