"""The HTML report of a run folder (``styleseg report``): the run-folder contract, its reader, tables and HTML."""

from __future__ import annotations

from styleseg.eval.report.html import build_html, pick_slice, write_report
from styleseg.eval.report.run_folder import Arm, RunFolder, read_jsonl
from styleseg.eval.report.run_info import ArmInfo, RunInfo
from styleseg.eval.report.tables import gap_closed

__all__ = ["Arm", "ArmInfo", "RunFolder", "RunInfo", "build_html", "gap_closed", "pick_slice", "read_jsonl",
           "write_report"]
