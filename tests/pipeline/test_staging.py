"""Write-then-rename helpers: an output is complete or absent, never half-written."""

from __future__ import annotations

import numpy as np
import pytest

from carvana_seg.pipeline import staging


def test_staged_dir_replaces_the_old_tree_only_on_success(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staging.staged_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no staging dir left behind
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with staging.staged_dir(out) as tmp:
        assert tmp != out and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_replace_dir_replaces_a_symlink_without_touching_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    out = tmp_path / "raw"
    out.symlink_to(target)
    new = tmp_path / "staging"
    new.mkdir()
    (new / "a.txt").write_text("a")
    staging.replace_dir(new, out)
    assert not out.is_symlink() and (out / "a.txt").is_file() and (target / "keep.txt").is_file()


def test_staged_file_and_write_text(tmp_path):
    path = tmp_path / "sub" / "x.json"
    staging.write_text(path, "{}\n")
    assert path.read_text() == "{}\n"
    with pytest.raises(ValueError):
        with staging.staged_file(path) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert path.read_text() == "{}\n" and sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_npz_writer_reads_back_like_savez_and_aborts_cleanly(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.full((5, 5), 255, np.uint8)}
    with staging.NpzWriter(tmp_path / "x.npz") as writer:
        for key, arr in arrays.items():
            writer.add(key, arr)
    with np.load(tmp_path / "x.npz") as npz:
        assert sorted(npz.files) == ["a", "b"]
        for key, arr in arrays.items():
            assert np.array_equal(npz[key], arr)
    with pytest.raises(KeyError):
        with staging.NpzWriter(tmp_path / "y.npz") as writer:
            writer.add("a", arrays["a"])
            raise KeyError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
