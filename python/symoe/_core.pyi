# Every argument is converted and checked at the binding: arrays may be any array-like (lists,
# any integer dtype, non-contiguous) and are copied to the exact dtype when needed; integer
# arrays must hold integers (bool allowed, no floats) within int64. A value of the wrong kind or
# out of range raises ValueError naming the argument and the value.
from typing import Any, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt

Ints = np.ndarray[tuple[int, ...], np.dtype[np.int64]]
Floats = np.ndarray[tuple[int, ...], np.dtype[np.float64]]

class Routing(TypedDict):
    """What ``route`` returns."""

    experts: Ints  # N x k model ids
    gamma: Floats  # M: global competence after shift, square and normalisation
    counts_before_filter: Ints  # M: slots per model before the rare-expert filter
    kept: list[bool]  # M: survived the filter
    replaced: int  # slots redrawn by the filter
    probabilities: NotRequired[Floats]  # N x M, only with return_probabilities

class PlanArrays(TypedDict):
    """What ``make_plan`` returns (and ``simulate`` takes): steps in list order per device."""

    devices: int
    kind: np.ndarray[tuple[int, ...], np.dtype[np.int8]]  # StepKind values
    role: np.ndarray[tuple[int, ...], np.dtype[np.int8]]  # Role values
    device: np.ndarray[tuple[int, ...], np.dtype[np.int32]]
    model: np.ndarray[tuple[int, ...], np.dtype[np.int32]]
    tp: np.ndarray[tuple[int, ...], np.dtype[np.int32]]
    item_begin: Ints  # a run's items are items[item_begin:item_end]
    item_end: Ints
    seconds: Floats  # predicted duration of each step
    items: Ints  # expert runs: question * k + slot; aggregation runs: question

class Timeline(TypedDict):
    """What ``simulate`` returns."""

    start: Floats
    end: Floats
    busy: Floats  # per device
    makespan: float  # the last run's end
    finish: float  # the last step's end (trailing unloads, parks, pauses)
    loads: int
    bytes_loaded: float

COST_COLUMNS: list[str]  # model figures
TOKEN_COLUMNS: list[str]  # optional per-model tokens per request after them (NaN: the tokens argument's)
DRAIN_COLUMNS: list[str]  # optional after those: max_seqs, decode curve, output-length quantiles by role (NaN-padded)
MAX_K: int  # 65536: most experts per question; questions x k is capped at 2**32 slots

def route(
    profiles: npt.ArrayLike,  # int64 models x keywords, |score| < 2**40
    indptr: npt.ArrayLike,  # int64, N+1
    indices: npt.ArrayLike,  # int64 keyword ids in [0, keywords)
    k: int,  # [0, MAX_K]
    replace: bool,
    temperature: float,
    weighting: str,  # 'reference' or 'softmax'
    softmax_temperature: float,
    rare_threshold: float,
    seed: int,  # [0, 2**64)
    question_offset: int,  # [0, 2**64)
    threads: int,  # >= 0, 0: all hardware threads
    return_probabilities: bool,
) -> Routing: ...
def uniform(seed: int, question: int, stream: int, slot: int) -> float: ...  # uint64, uint64, uint32, uint32
def make_plan(
    experts: npt.ArrayLike,  # int64, N x k model ids
    aggregator: npt.ArrayLike | None,  # int64, N model ids, -1 none
    model_costs: npt.ArrayLike,  # float64, M x len(COST_COLUMNS), len(COST_COLUMNS + TOKEN_COLUMNS) or with DRAIN_COLUMNS
    device_memory: npt.ArrayLike,  # float64, D
    device_overlap: npt.ArrayLike,  # bool, D
    device_host: npt.ArrayLike,  # float64, D
    tokens: npt.ArrayLike,  # float64, 4: expert prompt, output, aggregate prompt, output (models without their own)
    tp_efficiency: float,
    strategy: str,  # 'symoe', 'reference' or 'naive'
    pause_s: float,
    replicate: bool,
) -> PlanArrays: ...
# A lower bound on the makespan of every plan simulate() accepts for these inputs, tensor-parallel
# steps included.
def lower_bound(
    experts: npt.ArrayLike,
    aggregator: npt.ArrayLike | None,
    model_costs: npt.ArrayLike,
    device_memory: npt.ArrayLike,
    device_overlap: npt.ArrayLike,
    device_host: npt.ArrayLike,
    tokens: npt.ArrayLike,
    tp_efficiency: float,
) -> float: ...
# Validates the plan (list order is each device's order; a tp step spans devices [device,
# device + tp) and needs its model resident on exactly that group), then predicts its timeline.
# Returns start, end (per step), busy (per device), makespan (the last run's end: trailing unloads,
# parks and pauses delay no result), finish (the last step's end), loads, bytes_loaded.
# Predicted seconds of one run of n requests: overhead + max(n * work per request, one stream) / tp speed-up;
# with DRAIN_COLUMNS given (a decode curve or length quantiles): overhead + (prefill + the batch's drain) / speed-up.
def run_seconds(
    model_cost: npt.ArrayLike,  # float64, len(COST_COLUMNS + TOKEN_COLUMNS), optionally + DRAIN_COLUMNS
    role: int,  # 0 expert, 1 aggregate
    n: int,
    tp: int = 1,
    tp_efficiency: float = 0.0,
) -> float: ...
def simulate(
    plan: PlanArrays | dict[str, Any],  # devices, and the step arrays as make_plan returns them
    experts: npt.ArrayLike,
    aggregator: npt.ArrayLike | None,
    model_costs: npt.ArrayLike,
    device_memory: npt.ArrayLike,
    device_overlap: npt.ArrayLike,
    device_host: npt.ArrayLike,
    tokens: npt.ArrayLike,
    tp_efficiency: float,
) -> Timeline: ...
