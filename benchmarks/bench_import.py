"""Time `import_sources` on ../shared/data/dicom/LUNG1-005 (91 x 512 x 512 CT + RTSTRUCT + SEG).

Issue 2, must show 6: goal < 10 s on the 2-core CPU dev machine. Prints a table of phases (header scan,
pixel read, rasterisation, body derivation, whole import incl. writing NIfTI) over ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_import.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom" / "LUNG1-005"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    from styleseg.io.dicom import read_ct_series, scan_dicom
    from styleseg.io.importer import import_sources
    from styleseg.io.rtstruct import rasterise_rtstruct
    from styleseg.labels import LabelSchema, derive_body

    times: dict[str, list[float]] = {k: [] for k in ("scan headers", "read CT pixels", "rasterise RTSTRUCT",
                                                      "derive body", "whole import (incl. NIfTI write)")}
    schema = LabelSchema.default()
    for _ in range(args.repeat):
        t = time.perf_counter()
        scan = scan_dicom([DATA])
        times["scan headers"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ct = read_ct_series(scan.of_kind("ct"))
        times["read CT pixels"].append(time.perf_counter() - t)
        rs = scan.of_kind("rtstruct")[0]
        t = time.perf_counter()
        rasterise_rtstruct(rs.ds, ct, schema, path=rs.path)
        times["rasterise RTSTRUCT"].append(time.perf_counter() - t)
        t = time.perf_counter()
        derive_body(ct.array)
        times["derive body"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            rep = import_sources([DATA], Path(tmp) / "ds")
            times["whole import (incl. NIfTI write)"].append(time.perf_counter() - t)
    n = len(scan.of_kind("ct"))
    print(f"LUNG1-005: {n} slices {ct.shape[1]}x{ct.shape[2]}, RTSTRUCT {len(rs.ds.ROIContourSequence)} ROIs; "
          f"annotated {rep.cases[0].annotated}")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
          f", Python {sys.version.split()[0]}")
    print(f"{'phase':<36}{'median s':>10}{'min s':>10}")
    for k, v in times.items():
        print(f"{k:<36}{statistics.median(v):>10.2f}{min(v):>10.2f}")
    whole = statistics.median(times["whole import (incl. NIfTI write)"])
    print(f"goal < 10 s: {'met' if whole < 10 else 'NOT met'} ({whole:.2f} s median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
