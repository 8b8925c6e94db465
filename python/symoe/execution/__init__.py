"""Execution of plans: the scheduler, run reports and calibration."""

from .calibration import calibrate
from .report import QuestionResult, RunReport, StepRecord
from .scheduler import RunOptions, run_plan

__all__ = ["QuestionResult", "RunOptions", "RunReport", "StepRecord", "calibrate", "run_plan"]
