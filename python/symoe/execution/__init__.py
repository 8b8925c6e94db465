"""Execution of plans: the scheduler, run reports and calibration."""

from .calibration import calibrate
from .report import QuestionResult, RunReport, StepRecord
from .run import run_plan
from .scheduler import RunOptions

__all__ = ["QuestionResult", "RunOptions", "RunReport", "StepRecord", "calibrate", "run_plan"]
