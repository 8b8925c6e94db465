"""symoe: Symbolic Mixture-of-Experts with a C++ routing and planning core."""

from importlib.metadata import version as _version

from .errors import SymoeError
from .config import Config, Device, ModelSpec, Tokens
from .planning import Plan, Timeline, plan, simulate
from .routing import Assignment, Profiles, keywords_to_csr, route

__all__ = ["Assignment", "Config", "Device", "ModelSpec", "Plan", "Profiles", "SymoeError", "Timeline", "Tokens",
           "keywords_to_csr", "plan", "route", "simulate"]
__version__ = _version("symoe")  # one home: pyproject.toml
