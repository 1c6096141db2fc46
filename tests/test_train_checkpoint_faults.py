"""Checkpoints that are damaged, hostile, or cannot be written.

One uninterrupted train_ddpm run (4 steps, checkpoints at 2 and 4, EMA) is the reference. Each case copies
its checkpoints, damages or plants something in checkpoint-4, and resumes with ``latest``: resume must
fall back to checkpoint-2 (or ignore the planted file), never run code from the folder, keep the damaged
folder, and end with the reference's weights.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from hf_ddm.training import checkpoint as ckpt
from test_train_common import FAST, TINY_UNET, idx_data, require_scheduler, run_script  # noqa: F401

COMMON = ["--channels", "1", "--resolution", "8", *TINY_UNET, *FAST, "--train_batch_size", "4", "--use_ema",
          "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "2"]


def args(data, out, *extra):
    return ["--data_dir", data, *COMMON, "--output_dir", out, *extra]


@pytest.fixture(scope="module")
def ref(idx_data, tmp_path_factory):
    require_scheduler("vp")
    out = tmp_path_factory.mktemp("ref")
    _, summary = run_script("train_ddpm", args(idx_data, out))
    return out, summary


def copy_checkpoints(ref_dir: Path, out: Path) -> Path:
    out.mkdir()
    for step in (2, 4):
        shutil.copytree(ref_dir / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out / "checkpoint-4"


class Payload:
    """Unpickling this creates ``marker``: stands for any code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": lambda c, m: truncate(c / "model.safetensors"),
    "flipped byte in optimizer": lambda c, m: flip_byte(c / "optimizer.bin"),
    "missing rng file": lambda c, m: (c / "random_states_0.pkl").unlink(),
    "truncated ema": lambda c, m: truncate(c / "ema.safetensors"),
    "unparsable state file": lambda c, m: (c / ckpt.STATE_FILE).write_text('{"global_step": 4, '),
    "planted pickle in optimizer": lambda c, m: plant(c / "optimizer.bin", m),
    "planted custom_checkpoint_0.pkl": lambda c, m: plant(c / "custom_checkpoint_0.pkl", m),
}


def resume_latest(data, out, caplog, expect_rc=0):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ddm.training"):
        _, summary = run_script("train_ddpm", args(data, out, "--resume_from_checkpoint", "latest"), expect_rc)
    return summary, caplog.text


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_previous_and_is_kept(idx_data, ref, tmp_path, caplog, damage):
    ref_dir, ref_summary = ref
    out, marker = tmp_path / "run", tmp_path / "marker"
    latest = copy_checkpoints(ref_dir, out)
    DAMAGE[damage](latest, marker)
    damaged_files = {p.name: p.read_bytes() for p in latest.iterdir()}
    summary, log = resume_latest(idx_data, out, caplog)
    assert f"checkpoint {latest} is damaged" in log and f"resuming from {out / 'checkpoint-2'}" in log
    assert summary["param_checksums"] == ref_summary["param_checksums"]  # 2 steps retrained from checkpoint-2
    kept = out / "checkpoint-4.damaged"  # nothing deleted: the damaged folder is kept, byte for byte
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == damaged_files
    assert ckpt.verify(str(out / "checkpoint-4")) is None  # and written anew
    assert not marker.exists()


@pytest.mark.parametrize("target", ["optimizer.bin", "random_states_0.pkl", "model.safetensors", "ema.safetensors",
                                    "custom_checkpoint_0.pkl"])
def test_planted_payload_never_runs_even_with_a_matching_manifest(idx_data, ref, tmp_path, caplog, target):
    """The attacker also rewrites the manifest, so only the loaders stand between the file and its code."""
    ref_dir, ref_summary = ref
    out, marker = tmp_path / "run", tmp_path / "marker"
    latest = copy_checkpoints(ref_dir, out)
    plant(latest / target, marker)
    state = json.loads((latest / ckpt.STATE_FILE).read_text())
    state["files"] = ckpt.manifest(str(latest))
    (latest / ckpt.STATE_FILE).write_text(json.dumps(state))
    assert ckpt.verify(str(latest)) is None

    summary, log = resume_latest(idx_data, out, caplog)
    assert not marker.exists()
    assert summary["param_checksums"] == ref_summary["param_checksums"]
    if target == "random_states_0.pkl":  # Accelerate skips RNG files that do not load; the loop reseeds every step
        assert not (out / "checkpoint-4.damaged").exists()
    else:  # refused: resumed from checkpoint-2
        assert f"checkpoint {latest} is damaged" in log and (out / "checkpoint-4.damaged").is_dir()


def test_damaged_explicit_checkpoint_is_refused_by_name(idx_data, ref, tmp_path, capsys):
    out = tmp_path / "run"
    latest = copy_checkpoints(ref[0], out)
    truncate(latest / "optimizer.bin")
    run_script("train_ddpm", args(idx_data, out, "--resume_from_checkpoint", latest), expect_rc=2)
    err = capsys.readouterr().err
    assert str(latest) in err and "optimizer.bin has the wrong size" in err
    assert latest.is_dir() and not (out / "checkpoint-4.damaged").exists()


def test_no_usable_checkpoint_stops_and_renames_nothing(idx_data, ref, tmp_path, capsys):
    out = tmp_path / "run"
    latest = copy_checkpoints(ref[0], out)
    for c in (latest, out / "checkpoint-2"):
        flip_byte(c / "model.safetensors")
    run_script("train_ddpm", args(idx_data, out, "--resume_from_checkpoint", "latest"), expect_rc=4)
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "checkpoint-4: model.safetensors fails its sha256" in err
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 563392 "
                                                "vs 563284")])
def test_failed_checkpoint_write_names_the_folder_and_keeps_the_last_one(idx_data, tmp_path, capsys, monkeypatch,
                                                                         error):
    """A full disk while checkpoint-4 is written (torch raises OSError or, from its zip writer, 'unexpected pos')."""
    require_scheduler("vp")
    real_save = torch.save

    def save(obj, f, *a, **kw):
        if ".tmp-checkpoint-4" in str(f):
            raise error
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    run_script("train_ddpm", args(idx_data, out), expect_rc=4)
    err = capsys.readouterr().err
    assert f"could not write checkpoint-4 in {out}" in err and str(error) in err
    assert f"the last complete checkpoint {out / 'checkpoint-2'} is intact" in err
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]  # partial one removed
    assert ckpt.verify(str(out / "checkpoint-2")) is None


def test_output_dir_that_cannot_be_created_fails_before_training(idx_data, capsys):
    out = "/proc/hf_ddm_no_such_dir/run"  # /proc refuses new folders, even to root
    run_script("train_ddpm", args(idx_data, out), expect_rc=2)
    assert f"--output_dir {out} cannot be created" in capsys.readouterr().err
