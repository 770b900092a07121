"""``styleseg run`` / ``styleseg demo``: the experiment schema, the arm table, the stages in order (benchmark and
job paths)."""

from __future__ import annotations

from styleseg.eval.report.run_folder import results_table
from styleseg.pipeline.arms import ARMS, Arm
from styleseg.pipeline.config import ALL_ARMS, DataConfig, ExperimentConfig, demo_config, load_experiment
from styleseg.pipeline.experiment import Experiment, run_experiment
from styleseg.pipeline.job import Job, JobConfig, run_pipeline

__all__ = ["ALL_ARMS", "ARMS", "Arm", "DataConfig", "Experiment", "ExperimentConfig", "demo_config",
           "Job", "JobConfig", "load_experiment", "results_table", "run_experiment", "run_pipeline"]
