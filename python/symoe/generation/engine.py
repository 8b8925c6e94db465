"""The engine interface: the only thing the scheduler knows about whatever hosts models.

An :class:`Engine` serves one device: it loads models onto it, generates batches (each finished
generation handed back the moment it completes), parks and wakes models where sleep mode exists,
unloads them, and says whether a model's host is still alive. Every call takes a deadline in the
engine's clock; a call that misses it kills what it waited on and raises :class:`EngineTimeout`.
Implementations: :mod:`.local` (vLLM worker processes) and :mod:`.fake` (tests, simulation).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SymoeError
from ..records import Generation, Request

if TYPE_CHECKING:
    from ..config.pool import Config

# Bounds of the waits no step's deadline covers (engines' own housekeeping):
SPAWN_S = 60.0      # a worker or server process is started (Popen returns) within this
KILL_WAIT_S = 30.0  # a killed process has exited within this, or it is reported and left behind
PREPARE_S = 600.0   # prepare(): the warm-up (a spare process, a device reservation) is ready within this


class EngineError(RuntimeError):
    """An engine failed; the message names the model, device and step."""


class EngineTimeout(EngineError):
    """An engine call missed its deadline; what it waited on was killed."""


class DeviceLost(EngineError):
    """A model's host or its whole node is gone (a cluster engine): ``device`` and ``node`` say
    where; with ``node_lost`` no reload there can succeed, so a run replans (execution/replan.py)."""

    def __init__(self, message: str, model: str, device: int, node: str, node_lost: bool):
        super().__init__(message)
        self.model, self.device, self.node, self.node_lost = model, device, node, node_lost


def key_names(cfg: Config) -> frozenset[str]:
    """The environment variables that hold the pool's API keys (every model's ``api_key_env``)."""
    return frozenset(m.api_key_env for m in cfg.models if m.api_key_env)


def without_keys(env: Mapping[str, str], cfg: Config) -> dict[str, str]:
    """``env`` for a child process (worker, server): without the pool's API keys. Only symoe's
    driver talks to endpoints; what vLLM needs is an open-ended set (``HF_*``, ``CUDA_*``,
    ``NCCL_*``, proxies, caches), so the keys are taken out rather than the rest listed."""
    names = key_names(cfg)
    return {k: v for k, v in env.items() if k not in names}


def position_limit(path: str | None) -> int | None:
    """``max_position_embeddings`` from the model folder's ``config.json`` (None: no folder on
    disk, or no such field; the engine then finds out)."""
    if not path:
        return None
    f = Path(path) / "config.json"
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SymoeError(f"{f}: not a readable JSON file: {e}") from e
    for d in (doc, doc.get("text_config") or {}):  # multimodal configs nest the text model's
        v = d.get("max_position_embeddings") if isinstance(d, dict) else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class ModelSettings:
    """How an engine hosts one model (from the pool config's model and ``[engine]`` tables)."""

    name: str
    path: str
    chat: bool = True
    platform: str = "gpu"
    dtype: str = "auto"
    max_model_len: int = 4096
    enforce_eager: bool = False
    sleep: bool = False
    gpu_memory_utilization: float | None = None
    trust_remote_code: bool = False
    share_of_bytes: float | None = None  # the device memory gpu_memory_utilization is a fraction of
    tensor_parallel_size: int = 1     # vLLM's tensor parallelism (GPU); see on_devices
    device_group: tuple[int, ...] = ()  # the plan's devices a sharded model spans; (): the engine's own

    @classmethod
    def of(cls, cfg: Config, name: str) -> ModelSettings:
        """The model's settings; a context length above what the model's own ``config.json``
        allows (where its folder is on disk) is refused here, before any engine starts."""
        m = cfg.model(name)
        eng = cfg.engine
        platform = eng.platform
        if platform == "cpu" and m.path and not Path(m.path).exists():
            raise ValueError(f"model {name}: path {m.path} does not exist (run `symoe models fetch tiny`?)")
        share = None if platform == "cpu" else min(0.95, m.resident_bytes / cfg.devices[0].memory_bytes)
        length = m.max_model_len or eng.max_model_len
        limit = position_limit(m.path)
        if limit is not None and length > limit:
            src = "its [[model]] max_model_len" if m.max_model_len else "[engine] max_model_len"
            raise SymoeError(f"model {name}: max_model_len {length} ({src}) exceeds the {limit} positions of "
                             f"{Path(str(m.path)) / 'config.json'} (max_position_embeddings): set max_model_len <= "
                             f"{limit} in its [[model]] table")
        return cls(m.name, m.path or m.name, m.chat, platform, eng.resolved_dtype, length, eng.eager,
                   m.park_s >= 0 and platform != "cpu", share, m.trust_remote_code,
                   share_of_bytes=None if share is None else cfg.devices[0].memory_bytes)

    def for_memory(self, memory_bytes: float | None) -> ModelSettings:
        """These settings on a device of ``memory_bytes`` (None: unknown, kept as they are): the
        memory share scaled to that device's own memory (devices of one pool may differ)."""
        if memory_bytes is None or self.gpu_memory_utilization is None or self.share_of_bytes is None:
            return self
        share = min(0.95, self.gpu_memory_utilization * self.share_of_bytes / memory_bytes)
        return dataclasses.replace(self, gpu_memory_utilization=share, share_of_bytes=memory_bytes)

    def on_devices(self, group: Sequence[int]) -> ModelSettings:
        """These settings for a model the plan shards over ``group`` (a tensor-parallel step). On a
        GPU: vLLM tensor parallelism over the group's GPUs. On CPU: one engine (tp 1) on the union of
        the group's cores: vLLM's CPU tensor parallelism needs one process per rank and its own
        shared-memory transport, which symoe's workers (one in-process engine each) do not run."""
        group = tuple(int(d) for d in group)
        if self.platform == "cpu":
            return replace(self, device_group=group)
        share = self.gpu_memory_utilization  # of each GPU: it holds 1/tp of the model (the plan's memory rule)
        return replace(self, tensor_parallel_size=len(group), device_group=group,
                       gpu_memory_utilization=None if share is None else share / len(group))

    def wire(self) -> dict[str, Any]:
        """As sent to a worker process (plain JSON)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class BatchInfo:
    """What one generate call did: its seconds, the tokens written and read, the generations made."""

    seconds: float
    tokens: int
    prompt_tokens: int
    generated: int
    first_token_s: float | None = None

    def then(self, later: BatchInfo) -> BatchInfo:
        """This call and a later one together (the first token is the first call's that made one)."""
        return BatchInfo(self.seconds + later.seconds, self.tokens + later.tokens, self.prompt_tokens + later.prompt_tokens,
                         self.generated + later.generated, self.first_token_s if self.generated else later.first_token_s)


@dataclass
class Tally:
    """A batch's generations so far, as every engine counts them while they arrive."""

    tokens: int = 0
    prompt_tokens: int = 0
    generated: int = 0

    def add(self, g: Generation) -> None:
        """Count one finished generation."""
        self.tokens += g.tokens
        self.prompt_tokens += g.prompt_tokens
        self.generated += 1

    def info(self, seconds: float, first_token_s: float | None = None) -> BatchInfo:
        """The batch's record once it is done."""
        return BatchInfo(seconds, self.tokens, self.prompt_tokens, self.generated, first_token_s)


OnDone = Callable[[Generation], None]
OnText = Callable[[str, str], None]  # (request key, its text so far): a generation still running


class Engine(ABC):
    """One device's host of models. Calls for different models may run on different threads
    (a load beside a generation); calls for one model never overlap."""

    device: int
    memory_bytes: float | None = None  # the device's memory (set by whoever builds the engine; None: unknown)

    def sized(self, model: ModelSettings) -> ModelSettings:
        """``model`` with its memory share of this engine's device."""
        return model.for_memory(self.memory_bytes)

    def prepare(self) -> None:  # noqa: B027  (optional: engines without a warm-up keep this)
        """Warm up ahead of the first load (e.g. start a spare process). Optional."""

    @abstractmethod
    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        """Make ``model`` resident; returns timing details."""

    @abstractmethod
    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        """Generate ``requests`` on a resident model, calling ``on_done`` once per finished one."""

    def generate_streaming(self, model: str, requests: Sequence[Request], on_done: OnDone, on_text: OnText,
                           streamed: Collection[str], what: str, deadline: float) -> BatchInfo:
        """:meth:`generate`, also calling ``on_text`` with the text so far of each request whose key
        is in ``streamed`` while it grows (possibly from another thread; a retried request starts
        again from ""). Engines that cannot stream keep this one: the text comes whole, with ``on_done``."""
        return self.generate(model, requests, on_done, what, deadline)

    def park(self, model: str, what: str, deadline: float) -> None:
        """Offload a resident model's weights to host memory (sleep mode)."""
        raise EngineError(f"{what}: sleep mode is not supported by this engine")

    def wake(self, model: str, what: str, deadline: float) -> None:
        """Bring a parked model back onto its device."""
        raise EngineError(f"{what}: sleep mode is not supported by this engine")

    @abstractmethod
    def unload(self, model: str, what: str, deadline: float) -> None:
        """Free the model's memory."""

    @abstractmethod
    def alive(self, model: str) -> bool:
        """Whether the model is resident and its host is still running."""

    @abstractmethod
    def kill(self, model: str) -> None:
        """Drop the model at once (its host is killed), e.g. after a fault."""

    @abstractmethod
    def close(self) -> None:
        """Kill everything this engine started; safe to call from any thread, more than once."""


class Clock:
    """Wall-clock seconds; the fake engine's :class:`ScaledClock` runs faster."""

    def now(self) -> float:
        """Seconds on this clock."""
        return time.monotonic()

    def real(self, seconds: float) -> float:
        """Real seconds for ``seconds`` of this clock."""
        return seconds

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock."""
        if seconds > 0:
            time.sleep(self.real(seconds))


def generation_from_event(ev: Any, pending: Mapping[str, Request], what: str, seconds: float) -> Generation:
    """Check one finished-generation event of an engine against the requests it was sent;
    anything malformed is an engine fault, never stored."""
    try:
        r = pending[ev["id"]]
        text, tokens, prompt_tokens, finish = ev["text"], ev["tokens"], ev["prompt_tokens"], ev["finish"]
        ok = (isinstance(text, str) and isinstance(tokens, int) and isinstance(prompt_tokens, int) and tokens >= 0
              and prompt_tokens >= 0 and isinstance(finish, str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise EngineError(f"{what}: malformed generation from the engine: {str(ev)[:200]}")
    return Generation.of(r, text, prompt_tokens, tokens, finish, seconds)


def remaining(deadline: float, clock: Clock) -> float:
    """Seconds of ``clock`` left before ``deadline`` (inf for no deadline)."""
    return math.inf if math.isinf(deadline) else deadline - clock.now()
