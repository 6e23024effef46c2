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


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_dead_runs_temporaries_of_that_output(tmp_path):
    import os

    dead, alive = _dead_pid(), os.getppid()
    for name in (f"x.npz.tmp-{dead}", f".x.npz.old-{dead}", f"x.npz.tmp-{alive}", f"y.npz.tmp-{dead}", "x.npz"):
        (tmp_path / name).write_text("t")
    (tmp_path / f"cache.tmp-{dead}").mkdir()
    (tmp_path / f"cache.tmp-{dead}" / "images.npy").write_text("half")
    removed = staging.sweep(tmp_path / "x.npz", tmp_path / "cache")
    assert sorted(p.name for p in removed) == sorted([f"x.npz.tmp-{dead}", f".x.npz.old-{dead}", f"cache.tmp-{dead}"])
    # a live writer's temporary and another output's are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npz", f"x.npz.tmp-{alive}", f"y.npz.tmp-{dead}"])
    staging.write_text(tmp_path / "y.npz", "new")  # the next write of an output sweeps its own
    assert not (tmp_path / f"y.npz.tmp-{dead}").exists()


def test_public_path_names_the_final_output():
    assert staging.public_path("/r/data/n/.raw.partial-123/train/a.jpg") == "/r/data/n/raw/train/a.jpg"
    assert staging.public_path("/r/results/n/submission.csv.gz.tmp-99") == "/r/results/n/submission.csv.gz"
    assert staging.public_path("/r/cache/32x32.tmp-7/images.npy") == "/r/cache/32x32/images.npy"


@pytest.mark.parametrize("err", ["ENOSPC", "EACCES", "EROFS"])
def test_a_refused_write_is_one_error_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch, err):
    import errno
    import os

    from carvana_seg.pipeline.errors import WriteError

    def refuse(*args, **kwargs):
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)), str(args[0]))

    monkeypatch.setattr(staging.os, "replace", refuse)
    out = tmp_path / "results" / "threshold.json"
    with pytest.raises(WriteError, match=rf"^cannot write {out}: {os.strerror(getattr(errno, err))}$"):
        staging.write_text(out, "{}")
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'oof.npz'}: "):
        with staging.NpzWriter(tmp_path / "oof.npz") as w:
            w.add("a", np.zeros(3))
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'cache'}: "):
        with staging.staged_dir(tmp_path / "cache") as tmp:
            (tmp / "images.npy").write_text("x")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["results"]


def test_an_error_naming_the_temporary_names_the_output_instead(tmp_path):
    from carvana_seg.pipeline.errors import DataError

    out = tmp_path / "submission.csv.gz"
    with pytest.raises(DataError) as info:
        with staging.staged_file(out) as tmp:
            raise DataError(f"{tmp}: row 3 is not valid RLE")
    assert str(info.value) == f"{out}: row 3 is not valid RLE"
