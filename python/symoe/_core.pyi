from typing import Any

import numpy as np
import numpy.typing as npt

COST_COLUMNS: list[str]

def route(
    profiles: npt.NDArray[np.int64],
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int64],
    k: int,
    replace: bool,
    temperature: float,
    weighting: str,
    softmax_temperature: float,
    rare_threshold: float,
    seed: int,
    question_offset: int,
    threads: int,
    return_probabilities: bool,
) -> dict[str, Any]: ...
def uniform(seed: int, question: int, stream: int, slot: int) -> float: ...
def make_plan(
    experts: npt.NDArray[np.int64],
    aggregator: npt.NDArray[np.int64] | None,
    model_costs: npt.NDArray[np.float64],
    device_memory: npt.NDArray[np.float64],
    device_overlap: npt.NDArray[np.bool_],
    device_host: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.float64],
    tp_efficiency: float,
    strategy: str,
    pause_s: float,
    replicate: bool,
) -> dict[str, Any]: ...
def lower_bound(
    experts: npt.NDArray[np.int64],
    aggregator: npt.NDArray[np.int64] | None,
    model_costs: npt.NDArray[np.float64],
    device_memory: npt.NDArray[np.float64],
    device_overlap: npt.NDArray[np.bool_],
    device_host: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.float64],
    tp_efficiency: float,
) -> float: ...
def simulate(
    plan: dict[str, Any],
    experts: npt.NDArray[np.int64],
    aggregator: npt.NDArray[np.int64] | None,
    model_costs: npt.NDArray[np.float64],
    device_memory: npt.NDArray[np.float64],
    device_overlap: npt.NDArray[np.bool_],
    device_host: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.float64],
    tp_efficiency: float,
) -> dict[str, Any]: ...
