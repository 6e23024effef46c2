"""Threads and GPUs per rule from the config (carvana_seg.pipeline.resources)."""

from __future__ import annotations

from carvana_seg.pipeline.config import resolve
from carvana_seg.pipeline.resources import gpus, rule_threads, threads, torch_threads
from carvana_seg.pipeline.stages import GPU_RULES, RULES, STAGES


def _cfg(**sections) -> dict:
    return resolve(
        {
            "name": "t",
            "data": {"source": "synthetic"},
            "variants": [{"name": "a", "width": 64, "height": 64}],
            **sections,
        }
    )


def test_threads_follow_the_configured_workers():
    cfg = _cfg(resize={"workers": 6}, train={"num_workers": 5}, predict={"workers": 3})
    assert threads(cfg, "resize_cache") == threads(cfg, "validate_data") == 6
    assert threads(cfg, "train") == 6 and threads(cfg, "ensemble") == 4 and threads(cfg, "outliers") == 4
    assert threads(cfg, "submission") == 3 and threads(cfg, "folds") == 1 and threads(cfg, "all") == 1
    no_zoom = _cfg(predict={"workers": 3}, outliers={"repredict": "none"})
    assert threads(no_zoom, "outliers") == 3 and gpus(no_zoom, "outliers") == 0 and gpus(cfg, "outliers") == 1
    assert set(rule_threads(cfg)) <= set(RULES)


def test_gpu_rules_come_from_the_stage_table():
    assert all(RULES[r] in STAGES for r in RULES)
    assert set(GPU_RULES) == {"train", "oof", "ensemble", "outliers"}
    cfg = _cfg()
    assert [r for r in RULES if gpus(cfg, r)] == list(GPU_RULES)


def test_torch_gets_what_the_workers_leave():
    assert torch_threads(17, 16) == 1 and torch_threads(1, 16) == 1 and torch_threads(4, 0) == 4
