"""The HTML report of a fake run folder (real NIfTI predictions), and its rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from styleseg.cli import app
from styleseg.eval.evaluate import evaluate
from styleseg.eval.report import Arm, RunFolder, gap_closed, pick_slice, write_report
from styleseg.io.dataset import Dataset
from styleseg.runs import append_jsonl


def _degrade(lab: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """Erode the heart and flip a few voxels: worse predictions for a larger ``level``."""
    from scipy import ndimage as ndi

    out = lab.copy()
    heart = out == 3
    for _ in range(int(level * 3)):
        heart = ndi.binary_erosion(heart)
    out[(out == 3) & ~heart] = 6
    flip = rng.random(out.shape) < 0.02 * level
    out[flip & (out == 6)] = 3
    return out


@pytest.fixture
def run_dir(tmp_path: Path, ref_dataset: Path, write_pred) -> Path:
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    ds = Dataset(ref_dataset)
    rng = np.random.default_rng(1)
    for arm, level in (("baseline", 1.0), ("styleseg", 0.5), ("oracle", 0.0), ("fda", 0.8)):
        for c in ("c0", "c1", "c2"):
            write_pred(run / "arms" / arm / "pred", c, _degrade(ds.load_label(c).array, rng, level))
        if arm != "styleseg":  # styleseg: metrics computed by the report from pred/
            evaluate(run / "arms" / arm / "pred", ref_dataset, out=run / "arms" / arm / "metrics.json", n_boot=200)
        (run / "arms" / arm / "model").mkdir(parents=True)
        for ep in range(5):
            append_jsonl(run / "arms" / arm / "model" / "train_log.jsonl",
                         {"epoch": ep, "loss": 1.0 / (ep + 1 + level), "val_dice": 0.5 + 0.08 * ep - 0.05 * level,
                          "val_dice_heart": 0.4 + 0.1 * ep})
    for g in ("style_0", "style_1"):
        (run / "generators" / g).mkdir(parents=True)
        for ep in range(4):
            append_jsonl(run / "generators" / g / "train_log.jsonl",
                         {"epoch": ep, "style_loss": 10.0 / (ep + 1), "content_loss": 1.0 + ep * 0.1})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(rng.random((8, 8)), cmap="gray")
    fig.savefig(run / "figures" / "style_grid.png")
    plt.close(fig)
    (run / "figures" / "style_grid.txt").write_text("style slices and generated slices")
    (run / "run.json").write_text(json.dumps({
        "title": "toy run <test>", "baseline": "baseline", "oracle": "oracle",
        "arms": {"baseline": {"description": "source only"}, "styleseg": "U-Net 2", "fda": {}, "oracle": {}},
        "target_ref": str(ref_dataset), "stages": {"train-seg": {"seconds": 12.5}, "evaluate": 1.25},
        "config": {"preset": "quick"}}))
    return run


def test_report_has_tables_figures_and_no_external_assets(run_dir: Path):
    out = write_report(run_dir, n_boot=200)
    assert out == run_dir / "report.html"
    text = out.read_text()
    assert "toy run &lt;test&gt;" in text  # escaped
    for needle in ("Metrics per arm", "Pixel accuracy", "Paired difference against the baseline",
                   "Share of the domain gap closed", "Segmentations", "Training curves", "Generator training",
                   "style slices and generated slices", "Stage timings", "train-seg", "computed from pred/"):
        assert needle in text, needle
    # arms in the configured order, baseline first
    order = [text.index(f"<td class=l>{a}</td>") for a in ("baseline", "styleseg", "fda", "oracle")]
    assert order == sorted(order)
    imgs = re.findall(r'<img src="([^"]+)"', text)
    # Dice bars, HD95 bars, diff bars, overlay, training curves, generator curves, extra figure
    assert len(imgs) == 7 and all(u.startswith("data:image/png;base64,") for u in imgs)
    assert not re.search(r'(src|href)="(http|//|file:)', text)
    assert "Not in this run folder" not in text  # everything was there


def test_gap_closed_hand_computed():
    def arm(name, d):
        return Arm(name, Path(name), metrics={"mean": {"heart": {"dice": {"mean": d}}, "cord": {"dice": {"mean": d}}}})

    base, oracle, mid = arm("baseline", 0.6), arm("oracle", 0.9), arm("styleseg", 0.75)
    oracle.metrics["mean"]["cord"]["dice"]["mean"] = 0.6  # no gap on cord
    g = gap_closed([base, mid, oracle], base, oracle, ["heart", "cord"])
    assert g == {"styleseg": {"heart": pytest.approx(0.5), "cord": None}}


def test_pick_slice_prefers_most_structures():
    lab = np.zeros((3, 4, 4), np.uint8)
    lab[0, :3, :3] = 1  # one big structure
    lab[1, 0, 0], lab[1, 1, 1] = 1, 3  # two structures
    lab[2, :, :] = 6  # body only
    assert pick_slice(lab, skip_values=[6]) == 1


def test_report_of_a_sparse_run_lists_what_is_missing(tmp_path: Path, ref_dataset: Path, write_pred):
    run = tmp_path / "sparse"
    write_pred(run / "arms" / "styleseg" / "pred", "c0", Dataset(ref_dataset).load_label("c0").array)
    evaluate(run / "arms" / "styleseg" / "pred", ref_dataset, out=run / "arms" / "styleseg" / "metrics.json",
             n_boot=50)
    (run / "arms" / "empty").mkdir()
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r.html").read_text()
    assert "Not in this run folder" in text
    for needle in ("run.json", "arms/empty: no metrics.json", "a baseline arm", "an oracle arm", "training curves"):
        assert needle in text, needle
    # the reference was found through metrics.json config.ref, so the overlay figure is there
    assert "Segmentations" in text
    assert RunFolder(run).target_ref == ref_dataset
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "run folder does not exist" in r.output


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run headless Chromium offline (the machine's network is closed) with a fresh profile; raises on failure."""
    exe = chromium()
    assert exe is not None
    with tempfile.TemporaryDirectory() as prof:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={prof}", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def render_screenshot(html: Path, png: Path, size: str = "1400,2000", timeout: float = 120.0) -> None:
    """Render ``html`` in headless Chromium and save a screenshot (raises on failure)."""
    _chromium([f"--screenshot={png}", f"--window-size={size}", html.resolve().as_uri()], timeout)


# Runs in the rendered page after every image has loaded: what the browser made of the report.
PROBE = """<script>
window.addEventListener("load", () => {
  const tables = {};
  for (const h of document.querySelectorAll("h3")) {
    const t = h.nextElementSibling;
    if (t && t.tagName === "TABLE" && !(h.textContent in tables))
      tables[h.textContent] = Array.from(t.rows, r => Array.from(r.cells, c => c.innerText.trim()));
  }
  const imgs = Array.from(document.images, i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                                                  shown: i.getBoundingClientRect().width}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({title: document.title, imgs, tables,
                                    injected: document.querySelectorAll("test").length});
  document.body.appendChild(out);
});
</script>"""


def render_probe(html: Path, timeout: float = 120.0) -> dict:
    """Load ``html`` (a copy with PROBE appended) in headless Chromium, dump the DOM after the load event and
    return what PROBE found: the document title, every <img>'s decoded size, every h3-headed table's cells."""
    probe_html = html.with_name(html.stem + ".probe.html")
    probe_html.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    r = _chromium(["--dump-dom", "--virtual-time-budget=10000", "--window-size=1400,2000",
                   probe_html.resolve().as_uri()], timeout)
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the probe did not run; Chromium said: {r.stderr[-2000:]}"
    import html as html_mod

    return json.loads(html_mod.unescape(m.group(1)))


def _mean_dice(pred_dir: Path, ref: Dataset, structure: str) -> tuple[float, int]:
    """The test's own mean Dice of one structure over the cases where it is annotated (2|P∩R| / (|P| + |R|))."""
    from styleseg.io.volume import read_nifti

    v = ref.schema.value(structure)
    scores = []
    for c in ref.labelled_cases(None):
        if structure not in c.annotated:
            continue
        p = read_nifti(pred_dir / f"{c.case_id}.nii.gz").array == v
        r = ref.load_label(c.case_id).array == v
        scores.append(2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    return float(np.mean(scores)), len(scores)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir: Path, ref_dataset: Path, tmp_path: Path):
    out = write_report(run_dir, n_boot=200)
    probe = render_probe(out)
    assert probe["title"] == "toy run <test>"  # the browser shows the text itself, not markup
    assert probe["injected"] == 0
    # every figure decoded to a real picture and is laid out on the page
    assert len(probe["imgs"]) == 7
    for im in probe["imgs"]:
        assert im["complete"] and im["w"] >= 100 and im["h"] >= 100 and im["shown"] > 0, im
    # a Dice cell as rendered, against the test's own Dice from the predictions on disk: the styleseg arm's
    # metrics are computed by the report from pred/, and c2 has no heart contour, so the mean is over c0, c1
    dice_rows = probe["tables"]["Dice"]
    header = dice_rows[0]
    row = next(r for r in dice_rows if r[0] == "styleseg")
    cell = row[header.index("heart")]
    want, n = _mean_dice(run_dir / "arms" / "styleseg" / "pred", Dataset(ref_dataset), "heart")
    assert n == 2
    assert cell.split()[0] == f"{want:.3f}" and cell.endswith(f"n={n}"), (cell, want)
    oracle = next(r for r in dice_rows if r[0] == "oracle")
    assert oracle[header.index("heart")].split()[0] == "1.000"  # the oracle's predictions are the reference

    png = tmp_path / "shot.png"
    render_screenshot(out, png)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] == 2000 and img.shape[1] == 1400
    # a rendered page: not blank, and the embedded figures put colour on the screen
    rgb = img[..., :3]
    assert rgb.std() > 0.05
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 0.3).mean() > 0.001
