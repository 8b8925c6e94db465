"""``symoe calibrate``'s measurements: one model at a time on the real in-process engine, its load
in three phases, the decode-rate curve and output lengths on validation questions (the figures of
:class:`symoe.config.profile.ModelProfile`)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config.pool import Config
from ..config.pool_file import CURVE_POINTS
from ..config.profile import ModelProfile, add_lengths, engine_share
from ..generation.engine import BatchInfo, ModelSettings
from ..generation.local import LocalEngine
from ..method.datasets import Question
from ..method.requests import Requests
from ..records import Generation, Request, Sampling, SamplingParams

NO_DEADLINE = math.inf
BATCHES = (1, 2, 4, 8, 16)  # the curve's points on CPU: 2**i sequences in flight (more add little there, slowly)
CURVE_PROMPT = 64           # tokens the curve's prompt takes at most (chat template included)
CURVE_TOKENS = 24           # new tokens per sequence for the curve (eos ignored: all of them)
# Distinct real prompts the prefill rate is timed on (one new token each): a run prefills batches of
# 3-60 prompts, and per token a batch of 4 prefills far slower than one of 16 (245 vs ~400 tokens/s).
PREFILL_PROMPTS = 16
PROMPT = ({"role": "user", "content": "Write a short story about a lighthouse keeper."},)
# vLLM's INFO lines that time the load's phases (weights read; KV cache, profiling and warm-up)
_WEIGHTS = re.compile(r"Loading weights took ([0-9.]+) ?s")
_INIT = re.compile(r"init engine \(.*?\) took ([0-9.]+) ?s")
_KV = re.compile(r"KV cache size: ([0-9,]+) tokens")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _FixedLength(Request):
    """A request that always generates its max_tokens (eos ignored)."""

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "ignore_eos": True}


def _fixed(model: str, chat: bool, batch: int, tokens: int) -> list[Request]:
    text = None if chat else "Once upon a time, a lighthouse keeper"
    return [_FixedLength(f"calibrate-{model}-{batch}-{i}", model, "expert", i, "calibrate", SamplingParams(0.7, tokens, i),
                         PROMPT if chat else None, text) for i in range(batch)]


def load_phases(log: Path) -> tuple[float, float] | None:
    """(weights read, engine init) seconds from the worker's log, when vLLM logged both."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    w, i = _WEIGHTS.findall(text), _INIT.findall(text)
    return (float(w[-1]), float(i[-1])) if w and i else None


def kv_tokens(log: Path) -> int | None:
    """Tokens the engine's KV cache holds, from the worker's log."""
    try:
        found = _KV.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    return int(found[-1].replace(",", "")) if found else None


def curve_batches(platform: str, kv: int | None) -> tuple[int, ...]:
    """The curve's points: on CPU :data:`BATCHES`; on a GPU 1, 2, 4, ... up to what the core's curve
    holds (2**(CURVE_POINTS-1)) and the KV cache fits (``kv`` tokens; unknown: the core's limit)."""
    if platform == "cpu":
        return BATCHES
    fits = (kv // (CURVE_PROMPT + CURVE_TOKENS)) if kv else 2 ** (CURVE_POINTS - 1)
    return tuple(2**i for i in range(CURVE_POINTS) if i == 0 or 2**i <= fits)


def curve_point(b: int, info: BatchInfo, tokens: int) -> tuple[float, float | None]:
    """(decode tokens/s with b in flight, prefill tokens/s) of one fixed-length batch: the first token
    ends the prefill, every later step decodes all b."""
    first = info.first_token_s or 0.0
    decode = b * (tokens - 1) / max(info.seconds - first, 1e-6)
    return decode, (info.prompt_tokens / first if first > 0 else None)


def prefill_rate(info: BatchInfo) -> float | None:
    """Prompt tokens per second of a batch whose requests generate one token each."""
    seconds = info.first_token_s or info.seconds
    return info.prompt_tokens / seconds if seconds > 0 and info.prompt_tokens else None


def measure_model(cfg: Config, name: str, questions: Sequence[Question], aggregate: bool, log_dir: Path,
                  say: Progress, keywords: bool = False, prefill: Sequence[Question] = (), device: int = 0) -> ModelProfile:
    """One model's figures: the worker's start, load phases, the decode curve, the prefill rate on
    ``prefill``'s distinct prompts (else on ``questions``' answers), expert (and aggregate, and
    keyword-sample) output lengths at the pool's new-token caps, on ``device`` of this machine."""
    m, settings = cfg.model(name), ModelSettings.of(cfg, name)
    eng = LocalEngine.for_config(cfg, device, log_dir)
    eng.env = {**eng.env, "VLLM_LOGGING_LEVEL": "INFO"}  # the load's phases are logged at INFO
    mp = ModelProfile()
    try:
        t0 = time.perf_counter()
        eng.prepare()
        assert eng.spare is not None
        log = eng.spare.log_path
        eng.spare.wait_ready(f"calibrate {name}: worker start", NO_DEADLINE)  # a run's spare has imported vllm
        mp.worker_start_s = time.perf_counter() - t0  # paid by a device's first load only (later: a warm spare)
        say(f"worker start {mp.worker_start_s:.1f} s")
        t0 = time.perf_counter()
        eng.load(settings, f"calibrate load {name}", NO_DEADLINE, keep_spare=False)
        mp.load_s = time.perf_counter() - t0
        phases, mp.kv_tokens = load_phases(log), kv_tokens(log)
        if phases and phases[0] > 0:
            mp.read_gbps = m.weight_bytes / phases[0] / 1e9
            mp.init_s = phases[1]
            mp.start_s = max(0.0, mp.load_s - phases[0] - phases[1])
        say(f"load {mp.load_s:.1f} s" + (f" (start {mp.start_s:.1f}, weights {phases[0]:.1f}, init {phases[1]:.1f})"
                                         if phases and mp.start_s is not None else ""))
        curve, curve_prefill = [], None
        for b in curve_batches(cfg.engine.platform, mp.kv_tokens):
            info = eng.generate(name, _fixed(name, settings.chat, b, CURVE_TOKENS), lambda g: None,
                                f"calibrate {name} x{b}", NO_DEADLINE)
            rate, pre = curve_point(b, info, CURVE_TOKENS)
            curve.append(rate)
            curve_prefill = pre or curve_prefill
            say(f"{b} in flight: {rate:.0f} tokens/s")
        mp.curves[engine_share(cfg)], mp.prefill_tps = curve, curve_prefill
        sampling = Sampling.for_pool(cfg)
        build = Requests(cfg, sampling)
        if prefill:  # distinct prompts: vLLM's prefix cache would serve repeats of one
            one = [replace(r, key=f"calibrate-prefill-{r.key}", params=replace(r.params, max_tokens=1))
                   for r in (build.expert(name, q, 0) for q in prefill)]
            mp.prefill_tps = prefill_rate(eng.generate(name, one, lambda g: None, f"calibrate {name} prefill", NO_DEADLINE))
        got: list[Generation] = []
        info = eng.generate(name, [build.expert(name, q, 0) for q in questions], got.append, f"calibrate {name} answers",
                            NO_DEADLINE)
        if info.first_token_s and not prefill:  # real prompts' prefill (the curve's short prompt mostly times the step overhead)
            mp.prefill_tps = info.prompt_tokens / info.first_token_s
        share = engine_share(cfg)
        if mp.prefill_tps:
            mp.prefills[share] = mp.prefill_tps
        mp.loads_by_share[share], mp.worker_starts[share] = mp.load_s, mp.worker_start_s
        say(f"prefill {mp.prefill_tps or 0:.0f} tokens/s")
        add_lengths(mp, "expert", m.max_tokens or sampling.max_tokens, [g.tokens for g in got])
        say(f"expert lengths {sorted(g.tokens for g in got)}")
        if aggregate:
            texts = {g.question: g.text for g in got}
            reqs = [build.aggregate(name, q, [texts.get(q.id, "")] * 3) for q in questions]
            agg: list[Generation] = []
            eng.generate(name, reqs, agg.append, f"calibrate {name} aggregations", NO_DEADLINE)
            add_lengths(mp, "aggregate", m.max_tokens or sampling.aggregate_max_tokens, [g.tokens for g in agg])
            say(f"aggregate lengths {sorted(g.tokens for g in agg)}")
        if keywords:  # the task's keyword model: its samples' lengths time the keyword stage's forecast
            kws: list[Generation] = []
            reqs = [r for q in questions for r in build.keywords(name, q)]
            kinfo = eng.generate(name, reqs, kws.append, f"calibrate {name} keywords", NO_DEADLINE)
            add_lengths(mp, "keywords", sampling.keyword_max_tokens, [g.tokens for g in kws])
            mp.keywords_prompt_tokens = kinfo.prompt_tokens / len(reqs) if reqs else None
            say(f"keyword lengths {sorted(g.tokens for g in kws)}")
    finally:
        eng.close()
    return mp


def measure_together(cfg: Config, name: str, questions: Sequence[Question], aggregate: bool, log_dir: Path,
                     say: Progress, keywords: bool = False, prefill: Sequence[Question] = ()) -> ModelProfile:
    """:func:`measure_model` on every local CPU device of ``cfg`` at once, as a run with that many
    devices on this host runs them: their engines share the machine (memory, caches, SMT siblings),
    and two 1-core engines busy together each ran 1.5-2x slower than one alone (2 vCPUs). The
    figures are device 0's with the worker start, load, prefill and curve averaged over the devices."""
    local = [d for d, dev in enumerate(cfg.devices) if dev.endpoint is None]
    if cfg.engine.platform != "cpu" or len(local) < 2:
        return measure_model(cfg, name, questions, aggregate, log_dir, say, keywords, prefill)
    with ThreadPoolExecutor(len(local)) as pool:
        got = list(pool.map(lambda d: measure_model(cfg, name, questions, aggregate, log_dir,
                                                    say if d == local[0] else lambda s: None, keywords, prefill, d), local))
    mp, share = got[0], engine_share(cfg)

    def mean(values: Sequence[float | None]) -> float | None:
        xs = [x for x in values if x is not None]
        return sum(xs) / len(xs) if xs else None

    mp.worker_start_s = mp.worker_starts[share] = mean([g.worker_start_s for g in got])
    mp.load_s = mp.loads_by_share[share] = mean([g.load_s for g in got])
    if all(share in g.prefills for g in got) and (rate := mean([g.prefills[share] for g in got])):
        mp.prefill_tps = mp.prefills[share] = rate
    if all(share in g.curves for g in got):
        mp.curves[share] = [sum(xs) / len(xs) for xs in zip(*(g.curves[share] for g in got))]
    say(f"{len(local)} engines at once: worker start {mp.worker_start_s or 0:.1f} s, load {mp.load_s or 0:.1f} s, "
        f"prefill {mp.prefill_tps or 0:.0f} tokens/s, curve {' '.join(f'{x:.0f}' for x in mp.curves.get(share, []))}")
    return mp
