"""symoe: Symbolic Mixture-of-Experts with a C++ routing and planning core."""

from importlib.metadata import version as _version

from .config.pool import Config, Device, EngineSettings, ModelSpec, Tokens
from .errors import SymoeError
from .execution import RunOptions
from .generation import Sampling
from .method.datasets import Question, load_questions
from .method.routing import Assignment, Profiles, keywords_to_csr, route
from .moe import SymbolicMoE
from .pipeline import RunResult, Task
from .planning.plan import Plan, Timeline, simulate
from .planning.planner import plan

__all__ = ["Assignment", "Config", "Device", "EngineSettings", "ModelSpec", "Plan", "Profiles", "Question",
           "RunOptions", "RunResult", "Sampling", "SymbolicMoE", "SymoeError", "Task", "Timeline", "Tokens",
           "keywords_to_csr", "load_questions", "plan", "route", "simulate"]
__version__ = _version("symoe")  # one home: pyproject.toml
