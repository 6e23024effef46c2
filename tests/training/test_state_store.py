"""The resume state's store (training.state_store, pipeline.state_location): a train job killed on one node resumes
on another, where its working directory holds nothing, from the store, to the same model as an unkilled run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from carvana_seg.pipeline import cli, state_location
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.training import state_store
from carvana_seg.training.state import sampled_digest
from tests.helpers import tiny_config, train_cmd


def _job_files(root: Path) -> tuple[Path, Path]:
    state, tb = root / "results" / "r" / "state" / "v" / "fold0", root / "results" / "r" / "tensorboard" / "v_fold0"
    state.mkdir(parents=True)
    (state / "last.pt").write_bytes(b"epoch 3")
    (state / "train.log").write_text("epoch 1\nepoch 2\nepoch 3\n")
    (tb / "sub").mkdir(parents=True)
    (tb / "events.out.1").write_bytes(b"e" * 10)
    (tb / "sub" / "events.out.2").write_bytes(b"f" * 5)
    return state, tb


def test_push_then_pull_on_an_empty_node_restores_every_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    node_a, node_b, store_dir = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    node_a.mkdir(), node_b.mkdir()
    monkeypatch.chdir(node_a)
    state, tb = _job_files(node_a)
    rel_state, rel_tb = state.relative_to(node_a), tb.relative_to(node_a)
    store = state_store.open_store(str(store_dir))
    store.push(rel_state, str(rel_tb))
    stored = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file())
    assert stored == [
        "results/r/state/v/fold0/last.pt",
        "results/r/state/v/fold0/train.log",
        "results/r/tensorboard/v_fold0/events.out.1",
        "results/r/tensorboard/v_fold0/sub/events.out.2",
    ]
    monkeypatch.chdir(node_b)  # the retry, on a node whose working directory is empty
    assert store.pull(rel_state, str(rel_tb)) == 4
    for p in (rel_state / "last.pt", rel_state / "train.log", rel_tb / "events.out.1", rel_tb / "sub/events.out.2"):
        assert (node_b / p).read_bytes() == (node_a / p).read_bytes(), p
    assert store.pull(Path("results/other/state"), None) == 0  # nothing stored: nothing pulled, no error


def test_a_grown_tensorboard_file_is_sent_again_and_the_state_is_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state, tb = _job_files(tmp_path)
    store = state_store.open_store("memory://carvana-test-store")  # any fsspec URL
    store.push(state.relative_to(tmp_path), str(tb.relative_to(tmp_path)))
    (state / "last.pt").write_bytes(b"epoch 4")
    (tb / "events.out.1").write_bytes(b"e" * 20)
    store.push(state.relative_to(tmp_path), str(tb.relative_to(tmp_path)))
    fs = store.fs
    assert fs.cat_file(f"{store.root}/results/r/state/v/fold0/last.pt") == b"epoch 4"
    assert fs.size(f"{store.root}/results/r/tensorboard/v_fold0/events.out.1") == 20
    assert not [p for p in fs.find(store.root) if ".partial-" in p]
    fs.rm(store.root, recursive=True)


def test_an_unknown_store_protocol_is_one_error_naming_the_key():
    with pytest.raises(ConfigError, match="state_store 'nosuchproto://x'"):
        state_store.open_store("nosuchproto://x")
    assert state_store.open_store(None) is None


@pytest.mark.parametrize(
    ("configured", "provider", "prefix", "usage", "store", "warns"),
    [
        (None, None, None, ["INPUT_OUTPUT", "PERSISTENCE"], None, False),  # shared filesystem: job-local state
        (None, "fs", "/shared/storage", [], "/shared/storage", False),  # no shared fs: the storage prefix
        (None, "s3", "s3://bucket/run", [], "s3://bucket/run", False),
        ("s3://b/state", "fs", "/shared/storage", [], "s3://b/state", False),  # the key wins
        ("/nfs/state", None, None, ["INPUT_OUTPUT"], "/nfs/state", False),
        (None, None, None, [], None, True),  # no shared fs, nowhere to go: said at the start
    ],
)
def test_where_the_state_goes_in_each_mode(configured, provider, prefix, usage, store, warns):
    usage_enums = [SimpleNamespace(name=u) for u in usage]
    settings = SimpleNamespace(
        shared_fs_usage=usage_enums, default_storage_provider=provider, default_storage_prefix=prefix
    )
    got, shared = state_location.from_workflow(configured, settings)
    assert got == store
    assert (state_location.warning(got, shared) is not None) == warns
    env = {state_location.ENV_VAR: "stale"}
    state_location.export(got, env)
    assert env.get(state_location.ENV_VAR) == store


def test_the_cache_identity_is_its_content_not_its_mtime(tmp_path):
    a = tmp_path / "images.npy"
    a.write_bytes(bytes(range(256)) * 4096)
    b = tmp_path / "copy.npy"
    shutil.copyfile(a, b)  # a storage provider's copy: new mtime, same bytes
    assert sampled_digest(a) == sampled_digest(b)
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    b.write_bytes(bytes(data))
    assert sampled_digest(a) != sampled_digest(b)


@pytest.mark.slow
def test_a_job_killed_on_one_node_resumes_on_another_from_the_store_to_the_same_model(
    tiny_cache, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    cfg = cfgmod.stage_config(tiny_config(), "train", "tiny")
    ref, run, store = tmp_path / "ref", tmp_path / "run", tmp_path / "store"
    assert cli.main(train_cmd(tiny_cache, cfg, ref)[3:]) == 0  # the unkilled run
    args = train_cmd(tiny_cache, cfg, run, "--state-store", str(store))[3:]
    assert cli.main([*args, "--max-epochs-this-run", "1"]) == 2  # "killed" after epoch 1
    shutil.rmtree(run / "state")  # the node is gone, and its disk with it
    caplog.clear()
    assert cli.main(args) == 0
    assert "pulled 2 resume file(s) from the state store" in caplog.text and "resuming from epoch 2" in caplog.text
    a, b = (torch.load(d / "best.pt", weights_only=True) for d in (run, ref))
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
