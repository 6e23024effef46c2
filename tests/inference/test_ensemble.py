"""Streaming test ensemble: shards + manifest, equality with a direct computation, resume, stale shards, memory."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import shutil
import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from carvana_seg.core import layout
from carvana_seg.core.images import read_image
from carvana_seg.data.resize_cache import resize_image
from carvana_seg.inference import ensemble, stream, variant_masks
from carvana_seg.inference.shards import shard_paths
from carvana_seg.models import runtime
from carvana_seg.pipeline import cli
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.settings.build import build
from carvana_seg.settings.predict import Predict
from carvana_seg.settings.variants import Variant
from carvana_seg.submission.writer import write_submission
from tests.helpers import MODEL_VARIANTS as VARIANTS
from tests.helpers import make_layout, make_models


def typed(cfg: dict) -> tuple[list[Variant], Predict]:
    """The ``variants`` and ``predict`` settings the stage builds from its slice ``cfg`` (validated first)."""
    cfg = cfgmod.validate_slice("ensemble", cfg)
    return [build(Variant, v) for v in cfg["variants"]], build(Predict, cfg["predict"])


def stage_cfg(shard_size: int = 5, batch_size: int = 5, workers: int = 0) -> dict:
    return {
        "name": "t",
        "predict": {"tta_hflip": True, "batch_size": batch_size, "workers": workers, "shard_size": shard_size},
        "variants": VARIANTS,
        "folds": {"k": 2, "use": None},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("ens")
    raw = make_layout(root / "raw", n_cars=1, n_test_cars=1, w=64, h=48)
    return root, raw, make_models(root)


def run_stage(
    root: Path, raw: Path, models: list[Path], cfg: dict, out: str = "probs", rc: int = 0, extra: tuple = ()
) -> dict:
    manifest = root / f"{out}.json"
    argv = [
        "ensemble",
        "--cfg",
        json.dumps(cfg),
        "--models",
        *map(str, models),
        "--raw",
        str(raw),
        "--out-dir",
        str(root / out),
        "--manifest",
        str(manifest),
        "--device",
        "cpu",
        "--threads",
        "2",
        *extra,
    ]
    assert cli.main(argv) == rc
    return json.loads(manifest.read_text()) if rc == 0 else {}


def read_shards(root: Path, out: str = "probs") -> dict[str, np.ndarray]:
    probs = {}
    for p in sorted((root / out).glob("shard_*.npz")):
        with np.load(p) as npz:
            probs.update({k: npz[k] for k in npz.files})
    return probs


def direct(raw: Path, ids: list[str], models: list[Path]) -> dict[str, np.ndarray]:
    """The non-streaming computation, straight from the definitions: every image in memory, one batch."""
    from carvana_seg.models.model import load_model

    imgs = [read_image(raw / "test" / f"{i}.jpg") for i in ids]
    h, w = imgs[0].shape[:2]
    total_w = sum(v["weight"] for v in VARIANTS)
    acc = np.zeros((len(ids), h, w), np.float32)
    for v in VARIANTS:
        x = torch.from_numpy(np.stack([resize_image(im, (v["width"], v["height"])) for im in imgs])).permute(0, 3, 1, 2)
        models_v = [load_model(p)[0] for p in models if p.parent.parent.name == v["name"]]
        with torch.inference_mode():
            p = sum((torch.sigmoid(m(x)) + torch.sigmoid(m(x.flip(-1))).flip(-1)) / 2 for m in models_v)
        p = (p / len(models_v))[:, 0].numpy()
        acc += np.stack([v["weight"] / total_w * cv2.resize(q, (w, h), interpolation=cv2.INTER_LINEAR) for q in p])
    return {i: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8) for i, a in zip(ids, acc)}


@pytest.mark.slow
def test_shards_manifest_and_equality_with_direct_computation(setup):
    root, raw, models = setup
    manifest = run_stage(root, raw, models, stage_cfg(), out="full")
    ids = layout.test_ids(raw)[0]
    assert manifest["n_images"] == len(ids) == 16 and manifest["n_computed"] == 16
    assert [s["file"] for s in manifest["shards"]] == [f"shard_0000{k}.npz" for k in range(4)]
    assert [s["n_images"] for s in manifest["shards"]] == [5, 5, 5, 1]
    assert manifest["bytes_per_image"] > 0 and manifest["images_per_s"] > 0 and manifest["hash"]
    assert (root / "full" / "shards_meta.json").is_file() and not list((root / "full").glob("*.tmp*"))
    probs = read_shards(root, "full")
    assert list(probs) == ids  # shard order = sample_submission order
    expected = direct(raw, ids, models)
    for image_id in ids:
        assert probs[image_id].dtype == np.uint8 and probs[image_id].shape == (48, 64)
        diff = np.abs(probs[image_id].astype(int) - expected[image_id])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, image_id  # batch-size float noise only
    vm = manifest["variant_masks"]  # each variant's own mask at 1/4 scale, for the outlier checks
    assert vm["variants"] == ["a", "b"] and vm["files"] == [f"variants_0000{k}.npz" for k in range(4)]
    with np.load(root / "full" / vm["files"][0]) as npz:
        assert npz.files == ids[:5] and variant_masks.unpack(npz[ids[0]], (48, 64)).shape == (2, 12, 16)
    # the manifest is what the submission stage reads
    n = write_submission(shard_paths(root / "full.json"), 0.5, raw / "sample_submission.csv", root / "sub.csv.gz")
    assert n == 16 and (root / "sub.csv.gz").is_file()


@pytest.mark.slow
def test_resume_after_kill_and_stale_shards(setup, monkeypatch):
    root, raw, models = setup
    real = runtime.predict_probs
    calls = {"n": 0, "fail_at": 3}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt  # the job is killed while computing shard 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "predict_probs", counting)
    argv_cfg = stage_cfg()
    run_stage(root, raw, models, argv_cfg, out="resume", rc=130)  # KeyboardInterrupt: exit status 130
    shard_dir = root / "resume"
    assert [p.name for p in shard_dir.glob("shard_*")] == ["shard_00000.npz"]  # nothing half-written
    mtime = (shard_dir / "shard_00000.npz").stat().st_mtime_ns

    calls.update(n=0, fail_at=-1)
    manifest = run_stage(root, raw, models, argv_cfg, out="resume")
    assert manifest["n_computed"] == 11 and manifest["n_reused"] == 5
    assert calls["n"] == 2 * 3  # 2 variants x 3 batches (5, 5, 1 images): shard 0 was not recomputed
    assert (shard_dir / "shard_00000.npz").stat().st_mtime_ns == mtime

    calls["n"] = 0  # a change that does not alter the numbers keeps every shard
    assert run_stage(root, raw, models, stage_cfg(batch_size=3), out="resume")["n_computed"] == 0 and calls["n"] == 0

    before = read_shards(root, "resume")
    new_models = make_models(root / "retrained", seed=1)
    manifest = run_stage(root, raw, new_models, argv_cfg, out="resume")
    assert manifest["n_computed"] == 16  # different model files: every stale shard discarded
    after = read_shards(root, "resume")
    assert any((before[k] != after[k]).any() for k in before)


@pytest.mark.slow
def test_a_retry_on_another_node_resumes_from_the_state_store(setup, monkeypatch, caplog):
    """Issue 31: without a shared filesystem the shard directory stays on the killed job's node. With a state store
    the retry (here: the same paths, the local directory deleted or another run's) pulls the finished shards of its
    run hash and computes only the rest; shards of another hash, in the store or on the node, are never used."""
    root, raw, models = setup
    store, shard_dir = root / "store", root / "node"
    remote = store / shard_dir.as_posix().lstrip("/")  # keys mirror the working-directory path
    extra = ("--state-store", str(store))
    real, calls = runtime.predict_probs, {"n": 0, "fail_at": -1}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt  # the node goes while shard 1 is computed
        return real(*args, **kwargs)

    def run(models_: list[Path], kill: bool = False, out: str = "node", with_store: bool = True) -> dict:
        calls.update(n=0, fail_at=3 if kill else -1)
        given = extra if out == "node" and with_store else ()
        return run_stage(root, raw, models_, stage_cfg(), out=out, rc=130 if kill else 0, extra=given)

    def same_as(out: str) -> bool:
        ours, theirs = read_shards(root, "node"), read_shards(root, out)
        return list(ours) == list(theirs) and all((ours[k] == theirs[k]).all() for k in ours)

    monkeypatch.setattr(runtime, "predict_probs", counting)
    run(models, kill=True)
    assert sorted(p.name for p in remote.iterdir()) == ["shard_00000.npz", "shards_meta.json", "variants_00000.npz"]
    shutil.rmtree(shard_dir)  # the retry runs elsewhere: nothing local survives
    with caplog.at_level("INFO"):
        manifest = run(models)
    assert "pulled 2 shard file(s) from the state store" in caplog.text
    assert manifest["n_computed"] == 11 and manifest["n_reused"] == 5 and calls["n"] == 2 * 3
    assert run(models, out="plain")["n_computed"] == 16 and same_as("plain")  # no store, never killed
    assert not remote.exists()  # complete and renamed: the store's copy is removed

    new_models = make_models(root / "retrained_store", seed=1)  # another run hash, the same store and paths
    shutil.rmtree(shard_dir)
    run(models, kill=True)  # the store and this node now hold shard 0 of the old models
    caplog.clear()
    with caplog.at_level("INFO"):
        assert run(new_models)["n_computed"] == 16  # local and stored old shards both discarded
    assert "discarded 2 shard file(s) of hash" in caplog.text
    assert run(new_models, out="plain_new")["n_computed"] == 16 and same_as("plain_new")

    shutil.rmtree(shard_dir)
    run(new_models, kill=True)  # the store holds the new models' shard 0 ...
    shutil.rmtree(shard_dir)
    run(models, kill=True, with_store=False)  # ... and this node the old models' (another job ran here before)
    manifest = run(new_models)  # the old local shard is discarded, the stored new one pulled
    assert manifest["n_computed"] == 11 and same_as("plain_new")


@pytest.mark.parametrize("finish_threads", [None, "0"], ids=["phased", "overlapped"])
def test_stream_is_a_generator_and_closing_it_stops_its_threads_and_workers(setup, monkeypatch, finish_threads):
    root, raw, models = setup
    if finish_threads is None:
        monkeypatch.delenv("CARVANA_SEG_FINISH_THREADS", raising=False)
    else:  # the overlapped schedule on a CPU: also exercises the DataLoader worker process
        monkeypatch.setenv("CARVANA_SEG_FINISH_THREADS", finish_threads)
    assert inspect.isgeneratorfunction(stream.iter_probs)
    config, predict = typed(stage_cfg(batch_size=2, workers=1))
    probs = stream.iter_probs(
        ensemble.load_variants(models, config, False, torch.device("cpu")),
        raw,
        layout.test_ids(raw)[0],
        predict,
        torch.device("cpu"),
    )
    image_id, prob = next(probs)
    assert prob.shape == (48, 64)
    ours = ("ensemble-gpu", "ensemble-phase")
    assert any(t.name.startswith(ours) for t in threading.enumerate())
    probs.close()
    assert not any(t.name.startswith(ours) and t.is_alive() for t in threading.enumerate())
    assert not multiprocessing.active_children()  # loader workers shut down with the stream


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(tmp_path, setup):
    """tracemalloc sees numpy buffers: 96 images of 480x640 in one shard peak like 32, not 64 maps of 307 kB
    (19.7 MB) higher, which is what holding the shard's maps until it is written would add.

    What is in flight at once is bounded (stream.py: two batches in the queue, the loader's, the finishing ones and
    the image being written), but how much of that bound a run reaches depends on the thread timing: 8 images (4
    batches of 2) sometimes never reached it, and under load 96 images once peaked 3.4 MB (11 maps' worth: a decoded
    batch more in flight) above 32. The allowance is half of what holding the shard adds: growth with the number of
    images fails, the bounded jitter does not."""
    _root, _raw, models = setup
    raw = make_layout(tmp_path / "raw", n_cars=1, n_test_cars=6, w=640, h=480)
    rows = (raw / "sample_submission.csv").read_text().splitlines()
    config, predict = typed(stage_cfg(shard_size=96, batch_size=2))
    variants = ensemble.load_variants(models, config, False, torch.device("cpu"))
    peaks = []
    for n in (32, 96):
        (raw / "sample_submission.csv").write_text("\n".join(rows[: 1 + n]) + "\n")
        out = tmp_path / f"probs{n}"
        ensemble.prepare_dir(out, "x")
        tracemalloc.start()
        ensemble.write_shards(variants, raw, layout.test_ids(raw)[0], out, predict, torch.device("cpu"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    held = (96 - 32) * 480 * 640  # the uint8 maps a shard held until written would add: 19.7 MB
    assert peaks[1] < peaks[0] + held / 2, (peaks, held)
