"""Render sections of a run's report.html to a PNG with headless Chromium (the README's figures).

    .venv/bin/python benchmarks/report_section_png.py runs/unannotated/report.html docs/figures/job_qc_report.png \
        --sections job-model qc --height 1400

Each section runs from its ``<h2 id=...>`` to the next ``<h2>``; they are written with the report's CSS into a
temporary page, which Chromium screenshots at ``--width`` x ``--height``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


def sections(html: str, ids: list[str]) -> str:
    css = re.search(r"<style>(.*?)</style>", html, re.S)
    parts = []
    for i in ids:
        m = re.search(rf"<h2 id={re.escape(i)}>.*?(?=<h2|</body>)", html, re.S)
        if m is None:
            raise SystemExit(f"no section <h2 id={i}> in the report")
        parts.append(m.group(0))
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><style>{css.group(1) if css else ''}"
            "body{margin:12px 24px}</style></head><body>" + "\n".join(parts) + "</body></html>")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sections", nargs="+", default=["qc"])
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no Chromium found (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "section.html"
        page.write_text(sections(args.report.read_text(), args.sections))
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={Path(tmp) / 'profile'}", f"--screenshot={args.out.resolve()}",
                        f"--window-size={args.width},{args.height}", page.as_uri()], check=True,
                       capture_output=True, timeout=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
