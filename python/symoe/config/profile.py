"""The machine profile: this machine's measured cost figures per model, kept in the cache
(``<cache>/profiles/<machine-key>.json``) and applied to a pool before it is planned.

``symoe calibrate`` measures them (load phases, the decode-rate curve, output lengths); every
finished run adds what it observed (:func:`observe`). A model's entry is keyed by its name and a
hash of its weight files' path and size, the file by the machine (processor and core count, or
GPU name) and the engine (vLLM's version), so figures never cross machines, weights or engines.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SymoeError
from .machine import machine as machine
from .machine import machine_key as machine_key
from .pool_file import CURVE_POINTS, GB, QUANTILES, cache_dir
from .profile_fit import RunSeen as RunSeen  # kept in profile files (ModelProfile.runs)
from .profile_fit import rate_factor, scaled
from .spec import ModelSpec

if TYPE_CHECKING:
    from .pool import Config

MAX_LENGTHS = 2000  # observed lengths kept per model, role and cap (the newest)
MAX_RUNS = 500      # observed runs and loads kept per model
ROLES = ("expert", "aggregate")
LENGTH_ROLES = (*ROLES, "keywords")  # lengths kept: the planned roles and the keyword samples


class ModelProfile(BaseModel):
    """One model's measured figures on this machine (None: not measured)."""

    model_config = ConfigDict(extra="ignore")  # a cache file another version wrote: what this one knows
    worker_start_s: float | None = None  # a fresh worker process importing vllm (a device's first load waits for it)
    start_s: float | None = None      # engine construction (vLLM's engine modules, config) before the weights are read
    read_gbps: float | None = None    # weight files read from disk
    init_s: float | None = None       # the rest of the engine load (KV cache, warm-up)
    load_s: float | None = None       # the whole load as measured (start + read + init)
    prefill_tps: float | None = None  # the last calibration's (profiles before ``prefills``)
    prefills: dict[str, float] = Field(default_factory=dict)  # prefill tokens/s by engine share, as curves
    # Worker start and whole load by engine share: a 1-core engine loads slower (weights are converted
    # on its cores), and engines starting together on one host slow each other (measure_together).
    worker_starts: dict[str, float | None] = Field(default_factory=dict)
    loads_by_share: dict[str, float | None] = Field(default_factory=dict)
    keywords_prompt_tokens: float | None = None  # a keyword request's prompt (all its samples share it)
    # Decode tokens/s at 1, 2, 4, ... sequences in flight, by the engine's share of the machine
    # (:func:`engine_share`: its CPU cores, "gpu"): two CPU devices on one host give each half the cores.
    curves: dict[str, list[float]] = Field(default_factory=dict)
    kv_tokens: int | None = None      # the KV cache's size: sequences in flight <= kv_tokens / (prompt + cap)
    # Output lengths by role, then by the max_tokens they were generated with ("256": [...]):
    # calibration's own, and the store's after each run (replaced, so a rerun adds nothing twice).
    lengths: dict[str, dict[str, list[int]]] = Field(default_factory=dict)
    run_lengths: dict[str, dict[str, list[int]]] = Field(default_factory=dict)
    # Runs observed (:class:`RunSeen`), and loads' seconds.
    runs: list[RunSeen] = Field(default_factory=list)
    loads: list[float] = Field(default_factory=list)


class Profile(BaseModel):
    """A machine's profile: what the machine is, and each model's figures (key: :func:`model_key`)."""

    model_config = ConfigDict(extra="forbid")
    key: str
    machine: dict[str, str | int | None]
    models: dict[str, ModelProfile] = Field(default_factory=dict)


def model_key(m: ModelSpec) -> str:
    """The model's name and a hash of its weights (their folder and the files' sizes)."""
    h = hashlib.sha256((m.path or m.name).encode())
    if m.path and Path(m.path).is_dir():
        for p in sorted(Path(m.path).iterdir()):
            if p.is_file():
                h.update(f"{p.name}:{p.stat().st_size}".encode())
    return f"{m.name}@{h.hexdigest()[:12]}"


def profile_path(key: str) -> Path:
    """Where the profile of machine ``key`` lives (``$SYMOE_PROFILES``, else ``<cache>/profiles``)."""
    return Path(os.environ.get("SYMOE_PROFILES") or cache_dir() / "profiles") / f"{key}.json"


def load(platform_: str) -> Profile:
    """This machine's profile (empty when none was written)."""
    m = machine(platform_)
    key = machine_key(m)
    path = profile_path(key)
    if not path.exists():
        return Profile(key=key, machine=m)
    try:
        return Profile.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        raise SymoeError(f"machine profile {path} is unreadable ({e}); delete it and run `symoe calibrate`") from None


def save(p: Profile) -> Path:
    """Write ``p`` atomically (a reader never sees half a file)."""
    path = profile_path(p.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(p.model_dump_json(indent=1, exclude_none=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def engine_share(cfg: Config) -> str:
    """The curve key of one engine of ``cfg``: its CPU cores (``[engine] threads``, else an equal
    share of this machine's cores among the pool's local devices, as the engines bind them), or "gpu"."""
    if cfg.engine.platform != "cpu":
        return "gpu"
    local = max(1, sum(d.endpoint is None for d in cfg.devices))
    return str(cfg.engine.threads or max(1, (os.cpu_count() or 1) // local))


def curve_for(mp: ModelProfile, share: str) -> tuple[tuple[float, ...], str] | None:
    """The curve measured at ``share``, else the nearest CPU share's scaled by the core ratio (an
    estimate, said so in the returned note), else None."""
    if share in mp.curves:
        return clean_curve(mp.curves[share]), "decode_curve"
    cpu = [k for k in mp.curves if k.isdigit()]
    if not share.isdigit() or not cpu:
        return None
    near = min(cpu, key=lambda k: abs(int(k) - int(share)))
    scale = int(share) / int(near)
    return clean_curve([r * scale for r in mp.curves[near]]), f"decode_curve scaled from {near} to {share} cores"


def prefill_for(mp: ModelProfile, share: str) -> float | None:
    """The prefill rate measured at ``share``, else the nearest CPU share's scaled by the core ratio
    (prefill is compute-bound: one core of two prefills about half as fast), else ``prefill_tps``."""
    if share in mp.prefills:
        return mp.prefills[share]
    cpu = [k for k in mp.prefills if k.isdigit()]
    if share.isdigit() and cpu:
        near = min(cpu, key=lambda k: abs(int(k) - int(share)))
        return mp.prefills[near] * int(share) / int(near)
    return mp.prefill_tps


def add_lengths(mp: ModelProfile, role: str, cap: int, lengths: list[int]) -> None:
    """Keep observed output lengths of ``role`` generated with at most ``cap`` new tokens."""
    kept = mp.lengths.setdefault(role, {}).setdefault(str(cap), [])
    kept.extend(int(x) for x in lengths)
    del kept[:-MAX_LENGTHS]


def recalibrated(old: ModelProfile | None, new: ModelProfile) -> ModelProfile:
    """``new`` (a fresh calibration) kept with what ``old`` gathered: other shares' curves, lengths
    (the new ones last, so trimming to :data:`MAX_LENGTHS` drops old ones first), prefill rates, runs,
    loads, run lengths."""
    if old is None:
        return new
    out = new.model_copy(update={"curves": {**old.curves, **new.curves}, "prefills": {**old.prefills, **new.prefills},
                                 "worker_starts": {**old.worker_starts, **new.worker_starts},
                                 "loads_by_share": {**old.loads_by_share, **new.loads_by_share},
                                 "runs": [*old.runs, *new.runs],
                                 "loads": [*old.loads, *new.loads], "run_lengths": {**old.run_lengths, **new.run_lengths},
                                 "lengths": {r: {c: list(ls) for c, ls in by.items()} for r, by in old.lengths.items()}})
    for role, by_cap in new.lengths.items():
        for cap, ls in by_cap.items():
            add_lengths(out, role, int(cap), ls)
    return out


def quantiles(lengths: list[int] | np.ndarray, count: int = QUANTILES) -> tuple[float, ...]:
    """``count`` lengths (fewer for few observations), entry i the (i + 0.5) / count quantile."""
    x = np.asarray(lengths, dtype=float)
    k = max(1, min(count, len(x)))
    return tuple(float(v) for v in np.quantile(x, (np.arange(k) + 0.5) / k, method="inverted_cdf"))


def lengths_for(mp: ModelProfile, role: str, cap: int | None) -> list[int]:
    """Observed lengths usable for a run capped at ``cap``: those generated with a cap at least as
    high, capped (seeded sampling: their first ``cap`` tokens are the run's); else all there are."""
    by_cap = [(int(c), ls) for d in (mp.lengths, mp.run_lengths) for c, ls in d.get(role, {}).items()]
    fit = [L for c, ls in by_cap if cap is None or c >= cap for L in ls]
    out = fit or [L for _, ls in by_cap for L in ls]
    return [min(L, cap) if cap else L for L in out]


def clean_curve(rates: list[float]) -> tuple[float, ...]:
    """A measured curve made valid for the core: never slower with more sequences, at most twice as
    fast with twice as many (noise on a shared machine breaks both)."""
    out: list[float] = []
    for r in rates[:CURVE_POINTS]:
        out.append(r if not out else min(max(r, out[-1]), 2 * out[-1]))
    return tuple(out)


def apply_model(m: ModelSpec, mp: ModelProfile, cap: int | None, prompt: float = 0.0,
                share: str = "gpu", aggregate_cap: int | None = None) -> tuple[ModelSpec, list[str]]:
    """``m`` with the profile's figures (``prompt``: its expert prompt tokens, for what its KV cache
    holds; ``share``: the engine's, :func:`engine_share`; ``cap`` / ``aggregate_cap``: the run's
    new-token caps by role, None: ``cap``); the names of those it took."""
    caps = {"expert": cap, "aggregate": cap if aggregate_cap is None else aggregate_cap}
    upd: dict[str, object] = {}
    curve_note = "decode_curve"
    if mp.loads_by_share.get(share) is not None:
        upd["load_s"] = mp.loads_by_share[share]
    elif mp.start_s is not None and mp.read_gbps and mp.init_s is not None:
        upd["load_s"] = mp.start_s + m.weight_bytes / (mp.read_gbps * GB) + mp.init_s
    elif mp.load_s is not None:
        upd["load_s"] = mp.load_s
    elif mp.loads:  # only runs' loads observed
        upd["load_s"] = float(np.median(mp.loads))
    if prefill := prefill_for(mp, share):
        upd["prefill_tps"] = prefill
    curve = curve_for(mp, share)
    if curve is not None:
        upd["decode_curve"], curve_note = curve
    if mp.kv_tokens and cap:
        upd["max_seqs"] = max(1, int(mp.kv_tokens // (prompt + (m.max_tokens or cap))))
    for role in ROLES:
        ls = lengths_for(mp, role, m.max_tokens or caps[role])
        if ls:
            upd[f"{role}_output_quantiles"] = quantiles(ls)
            upd[f"{role}_output_tokens"] = float(np.mean(ls))
    if ls := lengths_for(mp, "keywords", None):  # keyword samples: the forecast caps them at the keyword cap
        upd["keywords_output_quantiles"] = quantiles(ls)
    if mp.keywords_prompt_tokens:
        upd["keywords_prompt_tokens"] = mp.keywords_prompt_tokens
    names = ["load" if k == "load_s" else "lengths" if k.endswith("quantiles") else curve_note if k == "decode_curve"
             else k for k in upd if not k.endswith("_tokens")]
    return replace(m, **upd), list(dict.fromkeys(names))  # type: ignore[arg-type]


def apply(cfg: Config, max_tokens: int | None = None, aggregate_max_tokens: int | None = None,
          profile: Profile | None = None) -> tuple[Config, str]:
    """``cfg`` with this machine's measured figures (where the profile has the model) and every
    output length capped at the run's new-token limits; and one line saying which figures came from
    the profile and which from the config."""
    p = profile if profile is not None else load(cfg.engine.platform)
    cap = max_tokens or cfg.engine.max_tokens
    models: list[ModelSpec] = []
    took: list[str] = []
    kept: list[str] = []
    share = engine_share(cfg)
    starts: list[float] = []
    for m in cfg.models:
        mp = p.models.get(model_key(m)) if m.endpoint is None else None
        names: list[str] = []
        if mp is not None:
            start = mp.worker_starts.get(share, mp.worker_start_s)
            if start is not None:
                starts.append(start)
            m, names = apply_model(m, mp, cap, cfg.model_tokens(m.name).expert_prompt, share, aggregate_max_tokens)
            fit = rate_factor(replace(cfg, models=(m,)), m, mp.runs, share)  # runs seen correct the curve's level
            if fit is not None:
                m = scaled(m, fit.factor)
                names.append(f"rates x{1 / fit.factor:.2f} from {fit.runs} runs seen")
        models.append(m)
        (took if names else kept).append(f"{m.name} ({', '.join(names)})" if names else m.name)
    out = replace(cfg, models=tuple(models))
    if starts:  # one worker start per device, whatever model it loads first: the pool's median
        out = replace(out, engine=out.engine.model_copy(update={"worker_start_s": float(np.median(starts))}))
        took.append(f"worker start {float(np.median(starts)):.1f} s")
    if cap:
        out = out.with_max_tokens(cap, aggregate_max_tokens or cap)
    where = profile_path(p.key)
    if not took:
        return out, f"cost figures: all from the config (no machine profile for these models at {where}; `symoe calibrate`)"
    return out, (f"cost figures from the machine profile {where}: {'; '.join(took)}; the rest from the config"
                 + (f" ({', '.join(kept)}: all)" if kept else ""))
