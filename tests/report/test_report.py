"""The HTML report: the report-figures stage on fabricated results, and ``snakemake --report`` in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from carvana_seg.pipeline import cli
from carvana_seg.report.tables import dice_by_round, pseudo_rounds, stage_times
from tests.report.report_fixtures import FLAGGED, _bench, fabricate

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CATEGORIES = [
    "0. Worst cars first",
    "1. Training curves",
    "2. Architecture comparison",
    "3. Threshold",
    "4. Pseudo-labels",
    "5. Outliers",
    "6. Throughput",
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def run_stage(res: Path, rounds: int) -> Path:
    last = res if rounds == 1 else res / f"round{rounds}"
    out = res / "report"
    metrics = sorted(str(p) for p in res.rglob("metrics.csv"))
    argv = [
        "report-figures",
        "--metrics",
        *metrics,
        "--oof-dice",
        str(res / "oof_dice.csv"),
        "--threshold",
        str(last / "threshold.json"),
        "--curve",
        str(last / "threshold_curve.csv"),
        "--outliers",
        str(last / "outliers.csv"),
        "--sheets",
        str(last / "outliers" / "contact_sheets.json"),
        "--test-probs",
        str(last / "test_probs.json"),
        "--results",
        str(res),
        "--out-dir",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


@pytest.mark.slow
def test_stage_draws_every_figure_with_pseudo_rounds(tmp_path):
    res = tmp_path / "results" / "x"
    fabricate(res, ["a", "b"], [0, 1], rounds=2)
    out = run_stage(res, rounds=2)
    names = {p.name for p in out.iterdir()}
    curves = {f"training_{v}_fold{f}{s}.png" for v in "ab" for f in (0, 1) for s in ("", "_round2")}
    assert (
        curves
        | {
            "oof_dice.png",
            "threshold.png",
            "pseudo_labels.png",
            "throughput.png",
            "outliers.html",
            "outlier_gallery.html",
            "stage_times.html",
            "stage_times.csv",
            "landing.rst",
        }
        == names
    )
    for png in out.glob("*.png"):
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 600, png
    times = pd.read_csv(out / "stage_times.csv").set_index("stage")
    assert times.loc["train", "jobs"] == 4 and times.loc["train", "total_s"] == pytest.approx(122.0)
    assert times.loc["train (round 2)", "jobs"] == 4 and "resize" in times.index  # resize_96x64.tsv -> resize
    assert "8.00 images/s" in (out / "stage_times.html").read_text()
    assert f"{FLAGGED}_05.jpg" in (out / "outliers.html").read_text()
    assert (out / "outlier_gallery.html").read_text().count("data:image/jpeg;base64,") == 1
    rounds = pseudo_rounds(res)
    assert [r["round"] for r in rounds] == [2] and rounds[0]["n_images"] == 64
    assert list(dice_by_round(res).columns) == ["oof_ensemble_dice", "test_dice"]


def test_stage_tolerates_no_pseudo_labels_no_outliers_and_unmeasured_columns(tmp_path):
    res = tmp_path / "results" / "x"
    fabricate(res, ["a"], [0], rounds=1)
    (res / "outliers.csv").write_text("img,car,view,reasons,action,fix,changed_px,score\n")
    (res / "outliers" / "contact_sheets.json").write_text(json.dumps({"action": "flag", "sheets": []}))
    (res / "benchmarks" / "fetch.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n0.5\t0:00:00\t-\t-\n")
    out = run_stage(res, rounds=1)
    assert pseudo_rounds(res) == [] and dice_by_round(res).empty
    assert (out / "pseudo_labels.png").is_file()  # a note, not a failure
    assert "No test car was flagged" in (out / "outlier_gallery.html").read_text()
    assert "No test image was flagged" in (out / "outliers.html").read_text()
    assert stage_times(res / "benchmarks").set_index("stage").loc["fetch", "total_s"] == 0.5
    assert stage_times(tmp_path / "nowhere").empty


def _snakemake(work: Path, repo: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run(
        [SNAKEMAKE, *args, "-s", str(repo / "Snakefile"), "-d", str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def build_report(repo: Path, work: Path) -> Path:
    """Fabricated results, every other output a placeholder stamped by --touch, the real report_figures job,
    then ``snakemake --report``: the path of report.html."""
    cfg = {
        "name": "rep",
        "data": {"source": "synthetic"},
        "folds": {"k": 2},
        "pseudo_label": {"enabled": False},
        "variants": [{"name": "va", "width": 64, "height": 64}, {"name": "vb", "width": 96, "height": 64}],
    }
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    common = ("--configfile", str(work / "c.yaml"))
    summary = _snakemake(work, repo, "--summary", *common)
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    assert any(o.endswith("report/stage_times.csv") for o in outputs), summary[-2000:]
    fabricate(work / "results" / "rep", ["va", "vb"], [0, 1])
    _bench(work / "results" / "rep" / "benchmarks" / "resize_64x64.tsv", 3.0)  # report_figures declares every TSV
    for o in outputs:
        (work / o).parent.mkdir(parents=True, exist_ok=True)
        if Path(o).suffix:
            (work / o).touch(exist_ok=True)  # the fabricated files keep their content
        else:  # a directory output (data/<name>/raw, ground_truth, test_probs, outliers)
            (work / o).mkdir(exist_ok=True)
    _snakemake(work, repo, "--touch", "--forceall", "--cores", "1", *common)
    log = _snakemake(work, repo, "--cores", "1", "--forcerun", "report_figures", *common)
    assert "report_figures" in log and "train" not in re.findall(r"rule (\w+):", log)
    report = work / "results" / "rep" / "report.html"
    _snakemake(work, repo, "--report", str(report), *common)
    return report


def _embedded(report_html: str, var: str) -> dict:
    m = re.search(rf"<script id=\"{var}\">\s*var {var} = (.*?);\s*</script>", report_html, re.S)
    assert m, f"no {var} in the report"
    return json.loads(m.group(1))


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
@pytest.mark.dag
@pytest.mark.browser
def test_report_renders_in_headless_chromium(repo_root, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    report = build_report(repo_root, work)
    text = report.read_text()
    results, categories = _embedded(text, "results"), _embedded(text, "categories")
    assert sorted(categories) == CATEGORIES
    by_name = {Path(p).name: r for p, r in results.items()}
    assert {
        "training_va_fold0.png",
        "training_vb_fold1.png",
        "oof_dice.png",
        "threshold.png",
        "pseudo_labels.png",
        "throughput.png",
        "outliers.html",
        "outlier_gallery.html",
        "stage_times.html",
        "cars.html",
    } <= set(by_name)
    assert "Architecture comparison" in by_name["oof_dice.png"]["caption"]
    assert re.search(r"this run:\s+searched", by_name["threshold.png"]["caption"])  # rendered with the config
    stage_html = (work / "results" / "rep" / "report" / "stage_times.html").read_text()
    assert "Planned (cpu" in stage_html and "planned_hours" in stage_html and "measured_jobs" in stage_html

    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium): the rendering check needs it")
    check = (Path(__file__).with_name("report_check.js")).read_text()
    page = tmp_path / "report_checked.html"
    cut = text.rindex("</body>")
    page.write_text(text[:cut] + f"<script>{check}</script>" + text[cut:])
    res = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    found = re.findall(r'<pre id="carvana-check">(.*?)</pre>', res.stdout, re.S)
    assert found, f"the report's scripts did not run (rc {res.returncode}): {res.stderr[-2000:]}"
    seen = json.loads(html.unescape(found[-1]))
    assert seen["errors"] == []
    for cat in CATEGORIES:  # the report's menu renders each category with its results
        assert cat in seen["nav"][cat]
    assert "va" in seen["nav"]["1. Training curves"] and "threshold curve" in seen["nav"]["3. Threshold"]
    for path, size in seen["images"].items():  # every PNG decodes in the browser at its true size
        with Image.open(work / path) as img:
            assert size == [img.width, img.height], path
    assert len(seen["images"]) == sum(1 for r in results.values() if r["mime_type"] == "image/png") == 8
    gallery = next(v for p, v in seen["html_images"].items() if p.endswith("outlier_gallery.html"))
    assert gallery == [[160, 120]]  # the contact sheet inside the gallery page
    assert seen["shown"] and seen["shown"]["size"][0] > 0  # the content pane shows a figure
    info = next(v for p, v in seen["info"].items() if p.endswith("threshold.png"))
    assert "binarisation threshold" in info  # the caption, rendered
    # The page the report opens on states the run (report.landing, fabricated results): Dice, threshold, ensemble,
    # flagged cars, the submission and that it is partial, planned against measured cost.
    landing = seen["landing"]
    for text in (
        "OOF Dice",
        "round 1 0.99000",
        "Test Dice",
        "round 1 0.98000",
        "Threshold",
        "0.4500",
        "2 variants x 2 folds",
        "va (Unet resnet18, 64x64, weight 1)",
        "Flagged cars",
        FLAGGED,
        "action fix",
        "results/rep/submission.csv.gz",
        "partial, 64 of 100",
        "Cost",
        "device-hours on cpu",
        "h of job time",
        "planned peak disk",
    ):
        assert text in landing, (text, landing)
