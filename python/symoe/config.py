"""The pool config: models with their cost figures, devices, engine settings, token figures.

Read from TOML once and validated once (pydantic v2), here; every default has its home in this
file (the C++ core receives plain numbers and holds none). ``[defaults]`` holds figures every
``[[model]]`` inherits unless the model sets its own.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, NonNegativeFloat, PositiveFloat, PositiveInt, \
    ValidationError
from pydantic.dataclasses import dataclass

from . import _core
from .cluster import ClusterTable, planning_devices
from .errors import SymoeError

__all__ = ["GB", "ModelSpec", "Device", "Tokens", "EngineSettings", "Config", "bundled_config_path"]

GB = 1e9
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = NonNeg
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class CostDefaults(BaseModel):
    """``[defaults]``: cost figures every model inherits (the one home of each figure's default)."""

    model_config = _STRICT
    dtype_bytes: PositiveFloat = 2.0
    load_bandwidth_gbps: PositiveFloat = 2.0     # weights read from disk, GB/s
    init_s: Seconds = 0.0                        # engine start besides reading weights
    unload_s: Seconds = 1.0
    h2d_bandwidth_gbps: PositiveFloat = 25.0     # sleep mode: park/wake copies
    sleep: bool = False
    overhead_s: Seconds = 0.0                    # per batch
    prefill_tps: Rate = 10000.0
    decode_tps: Rate = 2000.0                    # saturated batch
    stream_tps: Rate = 50.0                      # one sequence alone
    extra_gb: NonNegativeFloat | None = None     # KV cache and activations per engine
    extra_fraction: NonNegativeFloat = 0.0       # ... as a fraction of the weights


_COST = CostDefaults()


class ModelEntry(CostDefaults):
    """One ``[[model]]`` table: a name, a size, and any ``[defaults]`` figure overridden."""

    name: str
    path: str | None = None
    params_b: PositiveFloat | None = None
    weight_gb: PositiveFloat | None = None
    weight_bytes: PositiveFloat | None = None
    extra_bytes: NonNegativeFloat | None = None
    load_s: Seconds | None = None
    park_s: FiniteFloat | None = None
    wake_s: Seconds | None = None
    chat: bool = True
    max_tokens: PositiveInt | None = None
    max_model_len: PositiveInt | None = None
    trust_remote_code: bool = False
    expert_prompt_tokens: NonNegativeFloat | None = None  # this model's own tokens per request
    expert_output_tokens: NonNegativeFloat | None = None  # (None: the [tokens] table's)
    aggregate_prompt_tokens: NonNegativeFloat | None = None
    aggregate_output_tokens: NonNegativeFloat | None = None
    endpoint: str | None = None            # an OpenAI-compatible server's base URL (http://host:port/v1)
    served_name: str | None = None         # the model id that server knows (None: name)
    api_key_env: str | None = None         # NAME of the environment variable holding its API key
    max_concurrency: PositiveInt = 8       # requests in flight to the endpoint at once
    serve: Literal["vllm"] | None = None   # a local model run in a vLLM server symoe starts


class DevicesTable(BaseModel):
    """``[devices]``: ``count`` identical devices."""

    model_config = _STRICT
    count: PositiveInt = 1
    memory_gb: PositiveFloat = 80.0
    overlap_load: bool = True
    host_memory_gb: NonNegativeFloat = 0.0


class ReferenceTable(BaseModel):
    """``[reference]``: figures of the authors' schedule."""

    model_config = _STRICT
    tp_efficiency: Annotated[float, Field(ge=0, le=1)] = 0.5  # speed-up of tp GPUs = 1 + (tp-1)*eff
    pause_s: Seconds = 10.0                                   # sleep after each expert


class EngineSettings(BaseModel):
    """``[engine]``: how engines host the pool's models."""

    model_config = _STRICT
    platform: Literal["cpu", "gpu"] = "gpu"
    dtype: str | None = None              # None: float32 on CPU (vLLM CPU wants it), auto on GPU
    max_model_len: PositiveInt = 4096
    kv_cache_gb: PositiveFloat = 1.0      # CPU engines: KV cache reserved per engine
    threads: Annotated[int, Field(ge=0)] | None = None  # CPU: cores per device (None: an equal share)
    enforce_eager: bool | None = None     # None: eager on CPU, graphs on GPU
    max_tokens: PositiveInt | None = None  # new tokens per answer (None: the run's sampling)

    @property
    def resolved_dtype(self) -> str:
        """The dtype engines use (float32 on CPU, auto on GPU unless set)."""
        return self.dtype or ("float32" if self.platform == "cpu" else "auto")

    @property
    def eager(self) -> bool:
        """Whether engines skip graph capture (on CPU unless set)."""
        return self.platform == "cpu" if self.enforce_eager is None else self.enforce_eager


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool and its cost-model figures (bytes, seconds, tokens per second).

    ``load_s`` is a cold start; ``park_s``/``wake_s`` the sleep-mode offload and return
    (``park_s < 0``: not supported). ``decode_tps``/``prefill_tps`` hold for a saturated batch,
    ``stream_tps`` for one sequence alone. ``max_tokens``, ``max_model_len`` and
    ``trust_remote_code`` are engine settings (None: the run's and ``[engine]``'s). The
    ``*_tokens`` figures are this model's expected tokens per request by role (reasoning models
    write far more than others; None: the config's ``[tokens]``).
    """

    name: str
    weight_bytes: NonNeg
    path: str | None = None
    extra_bytes: NonNeg = 0.0
    load_s: Seconds = 0.0
    unload_s: Seconds = 0.0
    park_s: FiniteFloat = -1.0
    wake_s: Seconds = 0.0
    overhead_s: Seconds = _COST.overhead_s
    prefill_tps: Rate = _COST.prefill_tps
    decode_tps: Rate = _COST.decode_tps
    stream_tps: Rate = _COST.stream_tps
    chat: bool = True  # instruct model with a chat template (False: plain completion)
    max_tokens: PositiveInt | None = None
    max_model_len: PositiveInt | None = None
    trust_remote_code: bool = False  # the model's own code from its folder (GLM-4, InternLM3)
    expert_prompt_tokens: NonNeg | None = None
    expert_output_tokens: NonNeg | None = None
    aggregate_prompt_tokens: NonNeg | None = None
    aggregate_output_tokens: NonNeg | None = None
    endpoint: str | None = None  # remote: behind this OpenAI-compatible server (no local memory)
    served_name: str | None = None
    api_key_env: str | None = None  # the variable's NAME; the key itself is read at run time only
    max_concurrency: PositiveInt = 8
    serve: Literal["vllm"] | None = None

    @property
    def resident_bytes(self) -> float:
        """Device memory the model holds while loaded: weights plus engine extras."""
        return self.weight_bytes + self.extra_bytes


@dataclass(frozen=True)
class Device:
    """One device's memory and abilities."""

    memory_bytes: Annotated[float, Field(gt=0)]
    overlap_load: bool = DevicesTable.model_fields["overlap_load"].default  # load beside a generation
    host_bytes: Annotated[float, Field(ge=0)] = 0.0  # host memory for weights parked by sleep mode
    endpoint: str | None = None  # plans only: the virtual device of this endpoint model


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Tokens:
    """Expected tokens per request, by role (``[tokens]``)."""

    expert_prompt: NonNeg = 300.0
    expert_output: NonNeg = 600.0
    aggregate_prompt: NonNeg = 2200.0
    aggregate_output: NonNeg = 600.0

    def of(self, role: str) -> tuple[float, float]:
        """(prompt, output) tokens of a request of ``role`` (aggregations and their benchmark vs the rest)."""
        if role in ("aggregate", "aggregator-benchmark"):
            return self.aggregate_prompt, self.aggregate_output
        return self.expert_prompt, self.expert_output


class PoolFile(BaseModel):
    """A pool config file as written (TOML tables)."""

    model_config = _STRICT
    defaults: CostDefaults = CostDefaults()
    model: list[ModelEntry] = Field(min_length=1)
    devices: DevicesTable = DevicesTable()
    tokens: Tokens = Tokens()
    reference: ReferenceTable = ReferenceTable()
    engine: EngineSettings = EngineSettings()
    meta: dict[str, Any] = {}
    cluster: ClusterTable | None = None


@dataclass(frozen=True, config=ConfigDict(arbitrary_types_allowed=True))
class Config:
    """A pool, the devices it runs on, the engine settings and the workload's token figures."""

    models: tuple[ModelSpec, ...]
    devices: tuple[Device, ...]
    tokens: Tokens = Tokens()
    tp_efficiency: float = ReferenceTable.model_fields["tp_efficiency"].default
    pause_s: float = ReferenceTable.model_fields["pause_s"].default
    meta: Mapping[str, Any] = field(default_factory=dict)
    engine: EngineSettings = EngineSettings()
    cluster: ClusterTable | None = None  # run on a Ray cluster: its devices are the plan's (cluster.py)

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names in the pool must be unique")

    @property
    def names(self) -> tuple[str, ...]:
        """The pool's model names, in config order."""
        return tuple(self._index)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {m.name: i for i, m in enumerate(self.models)}

    def index(self, name: str) -> int:
        """Position of model ``name`` in the pool."""
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(f"model {name!r} is not in the pool ({', '.join(self.names)})") from None

    def model(self, name: str) -> ModelSpec:
        """The pool's model ``name``."""
        return self.models[self.index(name)]

    def model_tokens(self, name: str) -> Tokens:
        """Model ``name``'s expected tokens per request: its own figures, else ``[tokens]``'."""
        m, t = self.model(name), self.tokens
        return Tokens(*(t_ if own is None else own for own, t_ in zip(
            (m.expert_prompt_tokens, m.expert_output_tokens, m.aggregate_prompt_tokens, m.aggregate_output_tokens),
            (t.expert_prompt, t.expert_output, t.aggregate_prompt, t.aggregate_output))))

    def run_seconds(self, name: str, role: str, n: int, tp: int = 1) -> float:
        """Predicted seconds of one run of ``n`` requests of ``role`` by model ``name`` (the core's
        formula: throughput bound, never faster than one sequence decoded alone)."""
        return _core.run_seconds(self._cost_row(self.index(name)), 1 if role in ("aggregate", "aggregator-benchmark") else 0, n, tp,
                                 float(self.tp_efficiency))

    def _cost_row(self, i: int) -> np.ndarray:
        """Model i's row of the core's cost matrix (COST_COLUMNS, then its tokens per request)."""
        m = self.models[i]
        t = asdict(self.model_tokens(m.name))
        return np.array([float(getattr(m, c)) for c in _core.COST_COLUMNS] +
                        [float(t[c.removesuffix("_tokens")]) for c in _core.TOKEN_COLUMNS], dtype=np.float64)

    def with_devices(self, count: int | None = None, memory_gb: float | None = None,
                     overlap_load: bool | None = None, host_memory_gb: float | None = None) -> Config:
        """The same pool on ``count`` identical devices (what-if: more GPUs, less memory, ...)."""
        base = self.devices[0]
        n = len(self.devices) if count is None else count
        if n < 1:
            raise ValueError(f"device count must be >= 1, got {n}")
        dev = Device(base.memory_bytes if memory_gb is None else memory_gb * GB,
                     base.overlap_load if overlap_load is None else overlap_load,
                     base.host_bytes if host_memory_gb is None else host_memory_gb * GB)
        return replace(self, devices=tuple([dev] * n) + tuple(d for d in self.devices if d.endpoint))

    def with_sleep(self, enabled: bool, h2d_bandwidth_gbps: float = _COST.h2d_bandwidth_gbps) -> Config:
        """What-if: sleep mode on (park/wake over host<->device copies) or off."""
        bw = h2d_bandwidth_gbps * GB
        models = tuple(replace(m, park_s=m.weight_bytes / bw if enabled else -1.0,
                               wake_s=m.weight_bytes / bw if enabled else 0.0) for m in self.models)
        return replace(self, models=models)

    @classmethod
    def bundled(cls, name: str) -> Config:
        """A config shipped with the package (``tiny``, ``paper16``)."""
        return cls.from_toml(bundled_config_path(name))

    @classmethod
    def load(cls, name_or_path: str | Path) -> Config:
        """A TOML path, or the name of a bundled config."""
        if Path(name_or_path).exists():
            return cls.from_toml(name_or_path)
        try:
            return cls.bundled(str(name_or_path))
        except ValueError:
            names = sorted(p.stem for p in bundled_config_path("tiny").parent.glob("*.toml"))
            raise SymoeError(f"--config {str(name_or_path)!r}: no such file, nor a bundled config "
                             f"({', '.join(names)})") from None

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
        """Validate a parsed pool file and resolve every model's figures."""
        try:
            f = PoolFile.model_validate(data)
        except ValidationError as e:
            raise SymoeError(_explain(e, data, source)) from None
        dv = f.devices
        devices = tuple(Device(dv.memory_gb * GB, dv.overlap_load, dv.host_memory_gb * GB) for _ in range(dv.count))
        models = tuple(_resolve(f.defaults, m, i, base, source) for i, m in enumerate(f.model))
        if f.cluster is not None:  # listed nodes: their devices (discovered ones: when a run asks the cluster)
            devices = planning_devices(f.cluster, f.engine.platform, dv.memory_gb, dv.overlap_load, source) or devices
        try:
            return cls(models, devices, f.tokens, f.reference.tp_efficiency, f.reference.pause_s, f.meta, f.engine,
                       f.cluster)
        except (ValueError, ValidationError) as e:
            raise SymoeError(f"{source}: {e}") from None

    def to_toml(self) -> str:
        """Every figure explicit, so ``from_toml`` reads back the same config."""
        def val(v: Any) -> str:
            return "true" if v is True else "false" if v is False else repr(v) if isinstance(v, (int, float)) \
                else json.dumps(str(v))

        d0 = self.devices[0]
        lines = ["[devices]", f"count = {sum(d.endpoint is None for d in self.devices)}", f"memory_gb = {d0.memory_bytes / GB!r}",
                 f"overlap_load = {val(d0.overlap_load)}", f"host_memory_gb = {d0.host_bytes / GB!r}", "", "[tokens]"]
        lines += [f"{k} = {float(v)!r}" for k, v in asdict(self.tokens).items()]
        lines += ["", "[reference]", f"tp_efficiency = {float(self.tp_efficiency)!r}",
                  f"pause_s = {float(self.pause_s)!r}", "", "[engine]"]
        lines += [f"{k} = {val(v)}" for k, v in self.engine.model_dump(exclude_none=True).items()]
        for m in self.models:
            lines += ["", "[[model]]"] + [f"{k} = {val(v)}" for k, v in asdict(m).items()
                                          if v is not None and not (m.endpoint and k == "weight_bytes")]
        if self.cluster is not None:
            lines += self.cluster.toml_lines()
        return "\n".join(lines) + "\n"

    def core_args(self) -> dict[str, Any]:
        """The plain numbers the C++ planner and simulator receive."""
        t = self.tokens
        cols = len(_core.COST_COLUMNS) + len(_core.TOKEN_COLUMNS)
        costs = np.array([self._cost_row(i) for i in range(len(self.models))], dtype=np.float64)
        return dict(
            model_costs=costs.reshape(-1, cols),
            device_memory=np.array([d.memory_bytes for d in self.devices], dtype=np.float64),
            device_overlap=np.array([d.overlap_load for d in self.devices], dtype=bool),
            device_host=np.array([d.host_bytes for d in self.devices], dtype=np.float64),
            tokens=np.array([t.expert_prompt, t.expert_output, t.aggregate_prompt, t.aggregate_output], dtype=np.float64),
            tp_efficiency=float(self.tp_efficiency),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (plan files); read back by :meth:`from_plain`."""
        return {"models": [asdict(m) for m in self.models], "devices": [asdict(d) for d in self.devices],
                "tokens": asdict(self.tokens), "tp_efficiency": self.tp_efficiency, "pause_s": self.pause_s,
                "engine": self.engine.model_dump(exclude_none=True),
                "cluster": None if self.cluster is None else self.cluster.model_dump()}

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(ModelSpec(**m) for m in d["models"]), tuple(Device(**x) for x in d["devices"]),
                   Tokens(**d["tokens"]), d["tp_efficiency"], d["pause_s"],
                   engine=EngineSettings.model_validate(d.get("engine", {})),
                   cluster=ClusterTable.model_validate(d["cluster"]) if d.get("cluster") else None)


def bundled_config_path(name: str) -> Path:
    """Path of the bundled config ``name``."""
    from importlib import resources

    p = Path(str(resources.files("symoe") / "configs" / f"{name}.toml"))
    if not p.exists():
        raise ValueError(f"no bundled config named {name!r}")
    return p


def _resolve(d: CostDefaults, m: ModelEntry, i: int, base: Path | None, source: str) -> ModelSpec:
    """A model's figures: its own, else ``[defaults]``', else derived (load time from size and bandwidth)."""
    g = CostDefaults(**{**d.model_dump(), **m.model_dump(include=set(CostDefaults.model_fields) & m.model_fields_set)})
    where = f"{source} [[model]] #{i + 1} ({m.name})"
    _check_serving(m, where)
    if m.weight_bytes is not None:
        wb = m.weight_bytes
    elif m.endpoint is not None:  # remote: nothing held locally, nothing to load
        wb, m = 0.0, m.model_copy(update={"load_s": m.load_s or 0.0, "extra_bytes": m.extra_bytes or 0.0,
                                          "park_s": -1.0})  # never parked: it holds nothing here
        g = g.model_copy(update={"unload_s": 0.0 if "unload_s" not in m.model_fields_set else g.unload_s})
    elif m.weight_gb is not None:
        wb = m.weight_gb * GB
    elif m.params_b is not None:
        wb = m.params_b * 1e9 * g.dtype_bytes
    else:
        raise SymoeError(f"{where}: give weight_bytes, weight_gb or params_b (or an endpoint)")
    extra = m.extra_bytes if m.extra_bytes is not None else \
        g.extra_gb * GB if g.extra_gb is not None else wb * g.extra_fraction
    h2d = g.h2d_bandwidth_gbps * GB
    path = m.path
    if path and "{cache}" in path:
        from .models import cache_dir

        path = path.replace("{cache}", str(cache_dir()))
    if path and base is not None and not Path(path).is_absolute() and (base / path).exists():
        path = str((base / path).resolve())
    return ModelSpec(
        name=m.name, path=path, weight_bytes=wb, extra_bytes=extra,
        load_s=m.load_s if m.load_s is not None else g.init_s + wb / (g.load_bandwidth_gbps * GB),
        unload_s=g.unload_s,
        park_s=m.park_s if m.park_s is not None else wb / h2d if g.sleep else -1.0,
        wake_s=m.wake_s if m.wake_s is not None else wb / h2d if g.sleep else 0.0,
        overhead_s=g.overhead_s, prefill_tps=g.prefill_tps, decode_tps=g.decode_tps, stream_tps=g.stream_tps,
        chat=m.chat, max_tokens=m.max_tokens, max_model_len=m.max_model_len, trust_remote_code=m.trust_remote_code,
        expert_prompt_tokens=m.expert_prompt_tokens, expert_output_tokens=m.expert_output_tokens,
        aggregate_prompt_tokens=m.aggregate_prompt_tokens, aggregate_output_tokens=m.aggregate_output_tokens,
        endpoint=m.endpoint, served_name=m.served_name, api_key_env=m.api_key_env, max_concurrency=m.max_concurrency,
        serve=m.serve)


def _check_serving(m: ModelEntry, where: str) -> None:
    """An endpoint is an http(s) URL with no local weights to serve; ``api_key_env`` is a variable
    NAME (never the key: a value that is not a name is refused without being repeated)."""
    if m.endpoint is not None:
        url = urlsplit(m.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SymoeError(f"{where}: endpoint must be an http(s) URL such as http://host:8000/v1")
        if m.serve is not None or m.path is not None:
            raise SymoeError(f"{where}: an endpoint model has no path or serve (the server at its endpoint holds it)")
    elif m.served_name is not None or m.api_key_env is not None:
        raise SymoeError(f"{where}: served_name and api_key_env belong to a model with an endpoint")
    if m.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.api_key_env):
        raise SymoeError(f"{where}: api_key_env must be the NAME of an environment variable (such as "
                         f"OPENAI_API_KEY), not the key itself")


def _explain(e: ValidationError, data: Mapping[str, Any], source: str) -> str:
    """The first error as ``file [table]: key ...``, with a "did you mean" for unknown keys."""
    err = e.errors()[0]
    loc = list(err["loc"])
    where = source
    known: set[str] = set(PoolFile.model_fields)
    if loc and loc[0] == "model" and len(loc) > 1 and isinstance(loc[1], int):
        where += f" [[model]] #{loc[1] + 1}"
        known = set(ModelEntry.model_fields)
        loc = loc[2:]
    elif loc and len(loc) > 1:
        table = PoolFile.model_fields[str(loc[0])].annotation
        table = next((t for t in get_args(table) if t is not type(None)), table)  # an optional table ([cluster])
        known = set(getattr(table, "model_fields", None) or {f.name for f in fields(table)})  # type: ignore[arg-type]
        where += f" [{loc[0]}]"
        loc = loc[1:]
    key = ".".join(str(x) for x in loc)
    if key == "model" and err["type"] in ("missing", "too_short"):
        return f"{where}: needs at least one [[model]] table"
    if err["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(key, known, 1)
        return f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "missing":
        return f"{where}: missing {key!r}"
    if not key:
        return f"{where}: expected a table, got {err['input']!r}"
    return f"{where}: {key} {_lower(err['msg'])}, got {err['input']!r}"


def _lower(msg: str) -> str:
    """pydantic's 'Input should be ...' as 'should be ...'."""
    return msg.removeprefix("Input ").removeprefix("Value error, ")
