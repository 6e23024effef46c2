"""The report's landing page (report.landing): headline numbers read from a finished run's files."""

from __future__ import annotations

import json

from docutils.core import publish_parts

from carvana_seg.pipeline import config as cfgmod
from carvana_seg.report import landing
from carvana_seg.report.figures import measured_times
from tests.report.report_fixtures import FLAGGED, fabricate


def _config(**pseudo: object) -> dict:
    return cfgmod.resolve(
        {
            "name": "x",
            "data": {"source": "synthetic"},
            "folds": {"k": 2},
            "pseudo_label": {"enabled": bool(pseudo), **pseudo},
            "variants": [
                {"name": "a", "width": 64, "height": 64, "weight": 2.0},
                {"name": "b", "width": 96, "height": 64},
            ],
        }
    )


def _rows(res, config) -> dict[str, str]:
    last = res / "round2" if (res / "round2").is_dir() else res
    first, later = measured_times(res / "benchmarks")
    rows = landing.headline(
        res,
        last / "threshold.json",
        last / "outliers.csv",
        last / "outliers" / "contact_sheets.json",
        last / "test_probs.json",
        config,
        [first] + [t for _, t in later],
    )
    return dict(rows)


def test_two_rounds_a_partial_submission_and_a_flagged_car(tmp_path):
    res = tmp_path / "results" / "x"
    fabricate(res, ["a", "b"], [0, 1], rounds=2)
    (res / "threshold.json").write_text(json.dumps({"threshold": 0.5, "mean_dice": 0.97123, "n_images": 12}))
    (res / "test_score_round1.json").write_text(json.dumps({"mean_dice": 0.96}))  # round one's, before the last
    rows = _rows(res, _config(rounds=2, variants=["a"]))
    assert rows["OOF Dice"] == "round 1 **0.97123**, round 2 **0.99000** (the ensemble, out of fold)"
    assert rows["Test Dice"] == "round 1 **0.96000**, round 2 **0.98000** (the submission, known masks)"
    assert rows["Threshold"].startswith("**0.4500** (search on 12 out-of-fold images")
    assert rows["Ensemble"] == (
        "2 variants x 2 folds: ``a`` (Unet resnet18, 64x64, weight 2, round 2); "
        "``b`` (Unet resnet18, 96x64, weight 1, round 1)"
    )
    assert rows["Flagged cars"].startswith(f"**1** car (1 image), action ``fix``: ``{FLAGGED}``")
    assert rows["Submission"] == (
        "``results/x/submission.csv.gz``: **partial**, 64 of 100 listed test images (Kaggle refuses it)"
    )
    assert "device-hours on cpu" in rows["Cost"] and "h of job time" in rows["Cost"]


def test_one_round_hidden_masks_no_flags_a_complete_submission(tmp_path):
    res = tmp_path / "results" / "x"
    fabricate(res, ["a", "b"], [0, 1], rounds=1)
    (res / "test_score.json").unlink()  # Kaggle data: the test masks are hidden
    (res / "outliers.csv").write_text("img,car,view,reasons,action,fix,changed_px,score\n")
    (res / "test_probs.json").write_text(
        json.dumps({"n_images": 100064, "n_listed": 100064, "partial": False, "device": "cuda (NVIDIA H100 80GB HBM3)"})
    )
    rows = _rows(res, _config())
    assert rows["Test Dice"] == "not known (the test masks are hidden)"
    assert rows["Flagged cars"] == "none (outlier check, action ``fix``)"
    assert rows["Submission"] == "``results/x/submission.csv.gz``: complete, 100,064 test images"
    assert "on h100" in rows["Cost"]
    assert "round 2" not in rows["Ensemble"]


def test_the_page_renders_as_a_table_of_fields(tmp_path):
    res = tmp_path / "results" / "x"
    fabricate(res, ["a", "b"], [0, 1], rounds=1)
    rows = _rows(res, None)
    assert rows["Ensemble"] == "0 checkpoints" and rows["Cost"] == "not planned (no config given)"
    body = publish_parts(landing.to_rst(list(rows.items())), writer_name="html")["body"]
    assert body.count('<th class="field-name">') == 7, body  # one row each, the name beside its value
    assert "<strong>0.4500</strong>" in body and "system-message" not in body
