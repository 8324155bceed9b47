"""Output folders claimed one way for every command (runs.claim_output), and files written whole
with the user's permissions (files.atomic_write)."""
from __future__ import annotations

import json
import os

import pytest

from jukebox_fast.files import atomic_dir, atomic_text
from jukebox_fast.runs import OutputConflict, claim_output

MADE = ("checkpoint.pt", "model.pth.tar")


def test_a_new_folder_is_claimed_and_its_settings_recorded(tmp_path):
    assert claim_output(tmp_path / "new", {"lr": 0.1}, resume=False, overwrite=False, made=MADE) is False
    assert json.loads((tmp_path / "new" / "settings.json").read_text()) == {"lr": 0.1}


def test_an_earlier_run_is_refused_without_resume_and_named_with_its_settings(tmp_path):
    claim_output(tmp_path, {"lr": 0.1, "seed": 3}, resume=False, overwrite=False, made=MADE)
    (tmp_path / "checkpoint.pt").write_text("x")
    with pytest.raises(OutputConflict, match=r"already holds a run \(checkpoint.pt\): pass --resume"):
        claim_output(tmp_path, {"lr": 0.1, "seed": 3}, resume=False, overwrite=False, made=MADE)
    with pytest.raises(OutputConflict, match=r"already holds a run \(checkpoint.pt\), a run made with other settings "
                                             r"\(lr: 0.1 -> 0.01\): pass --overwrite"):
        claim_output(tmp_path, {"lr": 0.01, "seed": 3}, resume=False, overwrite=False, made=MADE)
    assert isinstance(OutputConflict("x"), (FileExistsError, ValueError))  # what the callers catch


def test_resume_goes_on_only_with_the_same_settings(tmp_path):
    claim_output(tmp_path, {"lr": 0.1}, resume=False, overwrite=False, made=MADE)
    (tmp_path / "checkpoint.pt").write_text("x")
    assert claim_output(tmp_path, {"lr": 0.1}, resume=True, overwrite=False, made=MADE) is True
    with pytest.raises(OutputConflict, match=r"holds a run made with other settings \(lr: 0.1 -> 0.2\)"):
        claim_output(tmp_path, {"lr": 0.2}, resume=True, overwrite=False, made=MADE)
    # commands that resume unasked (sample, embed) do so with equal settings
    assert claim_output(tmp_path, {"lr": 0.1}, resume=None, overwrite=False, made=MADE) is True


def test_overwrite_removes_what_the_earlier_run_made_and_nothing_else(tmp_path):
    claim_output(tmp_path, {"lr": 0.1}, resume=False, overwrite=False, made=(*MADE, "samples"))
    (tmp_path / "checkpoint.pt").write_text("x")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "a.wav").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_output(tmp_path, {"lr": 0.5}, resume=False, overwrite=True, made=(*MADE, "samples")) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "settings.json"]
    assert json.loads((tmp_path / "settings.json").read_text()) == {"lr": 0.5}


def test_digests_are_named_not_shown_and_unrecorded_runs_refused_where_asked(tmp_path):
    claim_output(tmp_path, {"vqvae": "aaaa"}, resume=None, overwrite=False, made=MADE)
    (tmp_path / "checkpoint.pt").write_text("x")
    with pytest.raises(OutputConflict, match=r"\(the VQ-VAE differs\)"):
        claim_output(tmp_path, {"vqvae": "bbbb"}, resume=None, overwrite=False, made=MADE,
                     names={"vqvae": "the VQ-VAE"})
    (tmp_path / "settings.json").unlink()
    with pytest.raises(OutputConflict, match="holds codes whose settings were not recorded"):
        claim_output(tmp_path, {"vqvae": "aaaa"}, resume=None, overwrite=False, made=MADE,
                     unrecorded="codes whose settings were not recorded")


def test_files_are_written_whole_with_the_users_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_text(tmp_path / "a" / "b.txt", "hello")
        assert path.read_text() == "hello" and (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
        assert [p.name for p in path.parent.iterdir()] == ["b.txt"]  # no temporary file left

        def build(folder):
            (folder / "x").write_text("1")

        built = atomic_dir(tmp_path / "made", build)
        assert (built / "x").read_text() == "1" and (built.stat().st_mode & 0o777) == 0o755

        def fails(folder):
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            atomic_dir(tmp_path / "never", fails)
        assert not (tmp_path / "never").exists() and [p.name for p in tmp_path.iterdir()].count("never") == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "made"]  # no half-built folder left
    finally:
        os.umask(old)
