"""A pool config file as written: its TOML tables as pydantic models, validated once.

Every default has its home here (the resolved types in :mod:`.config` and the C++ core take theirs
from these tables). ``[defaults]`` holds the cost figures every ``[[model]]`` inherits unless it
sets its own.

The measured cost model (issue 21; ``symoe calibrate`` writes the same figures into a machine
profile, see :mod:`.profile`):

- load = ``start_s`` (process and engine start) + weight bytes / ``load_bandwidth_gbps`` +
  ``init_s`` (KV-cache allocation, compilation or graph capture); ``load_s`` overrides the sum.
- ``decode_curve = [t1, t2, t4, ...]``: aggregate decode tokens/s with 1, 2, 4, ... (2**i)
  sequences in flight, at most :data:`CURVE_POINTS` entries, each at least the previous and at most
  twice it; between points the rate is interpolated linearly in the number of sequences, beyond the
  last it stays flat. ``max_seqs``: sequences an engine holds in flight at once (more requests
  queue: the next starts as one finishes).
- ``expert_output_quantiles`` / ``aggregate_output_quantiles`` (per ``[[model]]``): at most
  :data:`QUANTILES` output lengths, ascending, each standing for an equal share of that model's
  requests of that role (entry i is the (i + 0.5) / count quantile). A run of n requests then
  takes overhead + n * prompt / prefill_tps + the drain: sum over j of (q[j] - q[j-1]) * step(alive_j),
  alive_j = n * (count - j) / count, step(b) = b / rate(b); a run's max_tokens caps each length.
  Above ``max_seqs`` = c: (n - c) * mean length / rate(c) + the drain of c.
  ``keywords_output_quantiles``: the same for the model's keyword samples (the keyword stage's
  forecast; never planned by the core), ``keywords_prompt_tokens`` their prompt (prefilled once per
  question: its samples share it, and vLLM's prefix cache serves the repeats).

A model with a ``decode_curve``, quantiles or ``max_seqs`` is timed by the drain (without a curve its
rate at b sequences is min(b * stream_tps, decode_tps)); one with none of them by the scalar formula
``overhead + max(n * (prompt / prefill_tps + output / decode_tps), output / stream_tps)``.
Example::

    [[model]]
    name = "Qwen2.5-7B-Instruct"
    weight_gb = 15.2
    start_s = 6.0
    init_s = 9.0
    decode_curve = [40.0, 78.0, 150.0, 280.0, 500.0, 850.0, 1300.0, 1800.0]
    max_seqs = 256
    expert_output_quantiles = [180, 260, 310, 350, 390, 420, 460, 500, 540, 590, 650, 720, 800, 900, 1100, 1600]
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass

from ..errors import SymoeError
from .cluster_table import ClusterTable

GB = 1e9

NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = NonNeg
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
CURVE_POINTS = 8   # decode_curve: rates at 1, 2, 4, ..., 128 sequences in flight
QUANTILES = 16     # *_output_quantiles: lengths per model and role
Curve = Annotated[list[Rate], Field(min_length=1, max_length=CURVE_POINTS)]
Lengths = Annotated[list[NonNeg], Field(min_length=1, max_length=QUANTILES)]


class CostDefaults(BaseModel):
    """``[defaults]``: cost figures every model inherits (the one home of each figure's default)."""

    model_config = _STRICT
    dtype_bytes: PositiveFloat = 2.0
    load_bandwidth_gbps: PositiveFloat = 2.0     # weights read from disk, GB/s
    start_s: Seconds = 0.0                       # process and engine start before the weights are read
    init_s: Seconds = 0.0                        # engine initialisation after them (KV cache, compile)
    unload_s: Seconds = 1.0
    h2d_bandwidth_gbps: PositiveFloat = 25.0     # sleep mode: park/wake copies
    sleep: bool = False
    overhead_s: Seconds = 0.0                    # per batch
    prefill_tps: Rate = 10000.0
    decode_tps: Rate = 2000.0                    # saturated batch
    stream_tps: Rate = 50.0                      # one sequence alone
    decode_curve: Curve | None = None            # decode tokens/s at 1, 2, 4, ... sequences in flight
    max_seqs: PositiveInt | None = None          # sequences in flight at most (None: no limit)
    extra_gb: NonNegativeFloat | None = None     # KV cache and activations per engine
    extra_fraction: NonNegativeFloat = 0.0       # ... as a fraction of the weights


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
    expert_output_quantiles: Lengths | None = None     # output lengths, ascending, equal shares
    aggregate_output_quantiles: Lengths | None = None
    keywords_output_quantiles: Lengths | None = None  # keyword samples (the keyword stage's forecast)
    keywords_prompt_tokens: NonNegativeFloat | None = None  # a keyword request's prompt tokens
    endpoint: str | None = None            # an OpenAI-compatible server's base URL (http://host:port/v1)
    served_name: str | None = None         # the model id that server knows (None: name)
    api_key_env: str | None = None         # NAME of the environment variable holding its API key
    max_concurrency: PositiveInt = 8       # requests in flight to the endpoint at once
    serve: Literal["vllm"] | None = None   # a local model run in a vLLM server symoe starts

    @field_validator("expert_output_quantiles", "aggregate_output_quantiles", "keywords_output_quantiles")
    @classmethod
    def _ascending(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(b < a for a, b in zip(v, v[1:])):
            raise ValueError("must be ascending (equal shares of the requests, shortest first)")
        return v


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
    # Seconds before a device's first load can begin: its worker process starting (importing vLLM's
    # engine). Later loads find a warm spare. Measured by `symoe calibrate`; the simulator shifts by it.
    worker_start_s: NonNegativeFloat = 0.0

    @property
    def resolved_dtype(self) -> str:
        """The dtype engines use (float32 on CPU, auto on GPU unless set)."""
        return self.dtype or ("float32" if self.platform == "cpu" else "auto")

    @property
    def eager(self) -> bool:
        """Whether engines skip graph capture (on CPU unless set)."""
        return self.platform == "cpu" if self.enforce_eager is None else self.enforce_eager


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


def check_serving(m: ModelEntry, where: str) -> None:
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


def explain(e: ValidationError, data: Mapping[str, Any], source: str) -> str:
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


def read_toml(path: str | Path) -> dict[str, Any]:
    """A pool file's tables; unreadable, non-UTF-8 or invalid TOML is named with the file."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SymoeError(f"cannot read pool config {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise SymoeError(f"pool config {path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except tomllib.TOMLDecodeError as e:
        raise SymoeError(f"pool config {path} is not valid TOML: {e}") from e


def bundled_config_path(name: str) -> Path:
    """Path of the bundled config ``name``."""
    from importlib import resources

    p = Path(str(resources.files("symoe") / "configs" / f"{name}.toml"))
    if not p.exists():
        raise ValueError(f"no bundled config named {name!r}")
    return p


def cache_dir() -> Path:
    """Where fetched models live (``$SYMOE_CACHE``, else ``$XDG_CACHE_HOME/symoe`` or ``~/.cache/symoe``)."""
    base = os.environ.get("SYMOE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "symoe")
    return Path(base)
