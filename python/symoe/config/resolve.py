"""One ``[[model]]`` table resolved into a :class:`.spec.ModelSpec`: its own figures, else
``[defaults]``', else derived (the load from its size and the read bandwidth)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SymoeError
from .pool_file import GB, CostDefaults, ModelEntry, cache_dir, check_serving
from .spec import ModelSpec


def resolve_model(d: CostDefaults, m: ModelEntry, i: int, base: Path | None, source: str) -> ModelSpec:
    """A model's figures: its own, else ``[defaults]``', else derived (load time from size and bandwidth)."""
    g = CostDefaults(**{**d.model_dump(), **m.model_dump(include=set(CostDefaults.model_fields) & m.model_fields_set)})
    where = f"{source} [[model]] #{i + 1} ({m.name})"
    check_serving(m, where)
    _check_curve(g.decode_curve, f"{where} decode_curve" + ("" if "decode_curve" in m.model_fields_set else " (from [defaults])"))
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
        path = path.replace("{cache}", str(cache_dir()))
    if path and base is not None and not Path(path).is_absolute() and (base / path).exists():
        path = str((base / path).resolve())
    return ModelSpec(
        name=m.name, path=path, weight_bytes=wb, extra_bytes=extra,
        load_s=m.load_s if m.load_s is not None else g.start_s + wb / (g.load_bandwidth_gbps * GB) + g.init_s,
        unload_s=g.unload_s,
        park_s=m.park_s if m.park_s is not None else wb / h2d if g.sleep else -1.0,
        wake_s=m.wake_s if m.wake_s is not None else wb / h2d if g.sleep else 0.0,
        overhead_s=g.overhead_s, prefill_tps=g.prefill_tps, decode_tps=g.decode_tps, stream_tps=g.stream_tps,
        chat=m.chat, max_tokens=m.max_tokens, max_model_len=m.max_model_len, trust_remote_code=m.trust_remote_code,
        expert_prompt_tokens=m.expert_prompt_tokens, expert_output_tokens=m.expert_output_tokens,
        aggregate_prompt_tokens=m.aggregate_prompt_tokens, aggregate_output_tokens=m.aggregate_output_tokens,
        endpoint=m.endpoint, served_name=m.served_name, api_key_env=m.api_key_env, max_concurrency=m.max_concurrency,
        serve=m.serve, decode_curve=None if g.decode_curve is None else tuple(g.decode_curve), max_seqs=g.max_seqs,
        expert_output_quantiles=_tuple(m.expert_output_quantiles),
        aggregate_output_quantiles=_tuple(m.aggregate_output_quantiles),
        keywords_output_quantiles=_tuple(m.keywords_output_quantiles), keywords_prompt_tokens=m.keywords_prompt_tokens)


def _tuple(v: list[float] | None) -> tuple[float, ...] | None:
    return None if v is None else tuple(v)


def _check_curve(curve: list[float] | None, where: str) -> None:
    """What the core needs of a curve (plan.cpp check_model), said here with the file and model: twice
    the sequences never decode slower, nor more than twice as fast."""
    for i, (prev, v) in enumerate(zip(curve or [], (curve or [])[1:]), start=1):
        if not prev <= v <= 2 * prev:
            raise SymoeError(f"{where}: point {i} ({v} tokens/s at {2**i} sequences) must lie in "
                             f"[previous, 2 x previous] = [{prev}, {2 * prev}]")
