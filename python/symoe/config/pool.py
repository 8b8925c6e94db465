"""The pool config as the library uses it: each model with its resolved cost figures, the devices,
engine settings and token figures (read and validated by :mod:`.pool_file`, whose tables hold
every default; the C++ core receives plain numbers from here and holds none)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from .. import _core
from ..errors import SymoeError
from .cluster_table import ClusterTable
from .pool_file import (
    CURVE_POINTS,
    GB,
    QUANTILES,
    CostDefaults,
    EngineSettings,
    PoolFile,
    ReferenceTable,
    Tokens,
    bundled_config_path,
    explain,
    read_toml,
)
from .resolve import resolve_model
from .spec import Device, ModelSpec
from .topology import planning_devices

__all__ = ["GB", "ModelSpec", "Device", "Tokens", "EngineSettings", "Config", "bundled_config_path"]

_COST = CostDefaults()

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
    cluster: ClusterTable | None = None  # run on a Ray cluster: its devices are the plan's (cluster_table.py, topology.py)
    source: str | None = field(default=None, compare=False)  # the pool file read, for messages

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

    def run_seconds(self, name: str, role: str, n: int, tp: int = 1, max_tokens: int | None = None) -> float:
        """Predicted seconds of one run of ``n`` requests of ``role`` by model ``name`` (the core's
        formula, see :mod:`.pool_file`), every output length capped at ``max_tokens`` when given."""
        aggregate = role in ("aggregate", "aggregator-benchmark")
        cfg = self if max_tokens is None else self.with_max_tokens(max_tokens)
        return _core.run_seconds(cfg._cost_row(self.index(name)), int(aggregate), n, tp, float(self.tp_efficiency))

    def load_seconds(self, name: str) -> float:
        """Predicted seconds of a cold load of model ``name`` (start + weights / bandwidth + init)."""
        return float(self.model(name).load_s)

    def _cost_row(self, i: int) -> np.ndarray:
        """Model i's row of the core's cost matrix (COST_COLUMNS, its tokens per request, then the
        measured form's DRAIN_COLUMNS, NaN-padded)."""
        m = self.models[i]
        t = asdict(self.model_tokens(m.name))
        nan = float("nan")

        def padded(v: tuple[float, ...] | None, n: int) -> list[float]:
            return [float(x) for x in v or ()] + [nan] * (n - len(v or ()))

        drain = [nan if m.max_seqs is None else float(m.max_seqs), *padded(m.decode_curve, CURVE_POINTS),
                 *padded(m.expert_output_quantiles, QUANTILES), *padded(m.aggregate_output_quantiles, QUANTILES)]
        return np.array([float(getattr(m, c)) for c in _core.COST_COLUMNS] +
                        [float(t[c.removesuffix("_tokens")]) for c in _core.TOKEN_COLUMNS] + drain, dtype=np.float64)

    @property
    def linear_costs(self) -> bool:
        """Whether every model's run time is the scalar formula (linear in n above its floor: what
        the plan polish's CP-SAT model can express)."""
        return all(m.decode_curve is None and m.max_seqs is None and m.expert_output_quantiles is None
                   and m.aggregate_output_quantiles is None for m in self.models)

    def with_max_tokens(self, expert: int, aggregate: int | None = None) -> Config:
        """The pool as a run with these new-token caps sees it: every output length (quantiles and
        means) capped, as seeded sampling makes the first ``cap`` tokens of a longer answer the same."""
        agg = expert if aggregate is None else aggregate

        def cap(v: tuple[float, ...] | None, c: int) -> tuple[float, ...] | None:
            return None if v is None else tuple(min(x, float(c)) for x in v)

        models = []
        for m in self.models:  # a model's own max_tokens replaces the run's (method/requests.py)
            t, e, a = self.model_tokens(m.name), m.max_tokens or expert, m.max_tokens or agg
            models.append(replace(m, expert_output_tokens=min(t.expert_output, float(e)),
                                  aggregate_output_tokens=min(t.aggregate_output, float(a)),
                                  expert_output_quantiles=cap(m.expert_output_quantiles, e),
                                  aggregate_output_quantiles=cap(m.aggregate_output_quantiles, a)))
        tokens = replace(self.tokens, expert_output=min(self.tokens.expert_output, float(expert)),
                         aggregate_output=min(self.tokens.aggregate_output, float(agg)))
        return replace(self, models=tuple(models), tokens=tokens)

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
        return cls.from_dict(read_toml(path), base=Path(path).parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None, source: str = "config") -> Config:
        """Validate a parsed pool file and resolve every model's figures."""
        try:
            f = PoolFile.model_validate(data)
        except ValidationError as e:
            raise SymoeError(explain(e, data, source)) from None
        dv = f.devices
        devices = tuple(Device(dv.memory_gb * GB, dv.overlap_load, dv.host_memory_gb * GB) for _ in range(dv.count))
        models = tuple(resolve_model(f.defaults, m, i, base, source) for i, m in enumerate(f.model))
        if f.cluster is not None:  # listed nodes: their devices (discovered ones: when a run asks the cluster)
            devices = planning_devices(f.cluster, f.engine.platform, dv.memory_gb, dv.overlap_load, source) or devices
        try:
            return cls(models, devices, f.tokens, f.reference.tp_efficiency, f.reference.pause_s, f.meta, f.engine,
                       f.cluster, source)
        except (ValueError, ValidationError) as e:
            raise SymoeError(f"{source}: {e}") from None

    def to_toml(self) -> str:
        """Every figure explicit, so ``from_toml`` reads back the same config."""
        return to_toml(self)

    def core_args(self) -> dict[str, Any]:
        """The plain numbers the C++ planner and simulator receive."""
        t = self.tokens
        cols = len(_core.COST_COLUMNS) + len(_core.TOKEN_COLUMNS) + len(_core.DRAIN_COLUMNS)
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


def to_toml(cfg: Config) -> str:
    """``cfg`` as a pool file with every figure explicit (calibration writes it back)."""
    def val(v: Any) -> str:
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return "true" if v is True else "false" if v is False else repr(v) if isinstance(v, (int, float)) \
            else json.dumps(str(v))

    d0 = cfg.devices[0]
    lines = ["[devices]", f"count = {sum(d.endpoint is None for d in cfg.devices)}", f"memory_gb = {d0.memory_bytes / GB!r}",
             f"overlap_load = {val(d0.overlap_load)}", f"host_memory_gb = {d0.host_bytes / GB!r}", "", "[tokens]"]
    lines += [f"{k} = {float(v)!r}" for k, v in asdict(cfg.tokens).items()]
    lines += ["", "[reference]", f"tp_efficiency = {float(cfg.tp_efficiency)!r}",
              f"pause_s = {float(cfg.pause_s)!r}", "", "[engine]"]
    lines += [f"{k} = {val(v)}" for k, v in cfg.engine.model_dump(exclude_none=True).items()]
    for m in cfg.models:
        lines += ["", "[[model]]"] + [f"{k} = {val(v)}" for k, v in asdict(m).items()
                                      if v is not None and not (m.endpoint and k == "weight_bytes")]
    if cfg.cluster is not None:
        lines += cfg.cluster.toml_lines()
    return "\n".join(lines) + "\n"
