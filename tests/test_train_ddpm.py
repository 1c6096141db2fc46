"""train/train_ddpm.py end to end: tiny U-Net, 16x16 synthetic IDX data, a few steps each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

import faults
from test_train_common import (FAST, REPO, TINY_UNET, idx_data, require_scheduler, run_script,  # noqa: F401
                               run_subprocess)


def ddpm_args(data, out, *extra):
    return ["--data_dir", data, "--channels", "1", "--resolution", "8", *TINY_UNET, *FAST,
            "--train_batch_size", "4", "--output_dir", out, *extra]


def test_ddpm_end_to_end_and_pipeline_loads(idx_data, tmp_path):
    require_scheduler("vp")
    out = tmp_path / "run"
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "4", "--use_ema",
                                                    "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
                                                    "--validation_steps", "2", "--random_flip",
                                                    "--report_to", "tensorboard", "--num_train_timesteps", "50"))
    assert summary["global_step"] == 4 and summary["num_processes"] == 1
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # total limit 1
    assert (out / "samples" / "step_0000002.png").exists() and (out / "samples" / "step_0000004.png").exists()
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"
    card = (out / "README.md").read_text()
    assert "samples/step_0000004.png" in card and "final_loss" in card

    import numpy as np
    from diffusers import DiffusionPipeline
    from PIL import Image

    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.training.utils import make_grid

    remote = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)  # the folder carries its pipeline code
    assert type(remote).__name__ == "PixelDiffusionPipeline" and type(remote.unet).__name__ == "UNet"
    images = remote(batch_size=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    pipe = PixelDiffusionPipeline.from_pretrained(out)
    assert type(pipe) is PixelDiffusionPipeline and type(pipe.scheduler).__name__ == "VPScheduler"
    # the last validation grid was drawn by this very pipeline (EMA weights, seed --seed, 4 images, 3 steps)
    pipe.set_progress_bar_config(disable=True)
    final = pipe(batch_size=4, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    grid = np.asarray(Image.open(out / "samples" / "step_0000004.png").convert("RGB")).astype(int)
    assert np.abs(grid - make_grid(final.images).astype(int)).max() <= 1


@pytest.mark.parametrize("process", [["--scheduler", "sde", "--sde", "subvp", "--prediction_type", "v_prediction"],
                                     ["--scheduler", "ve", "--prediction_type", "sample"],
                                     ["--scheduler", "sde", "--sde", "ve", "--prediction_type", "score"]])
def test_ddpm_other_processes(idx_data, tmp_path, process):
    require_scheduler(process[1])
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, tmp_path / "run", "--max_train_steps", "2",
                                                    "--checkpointing_steps", "100", *process))
    assert summary["global_step"] == 2 and summary["final_loss"] == summary["final_loss"]  # finite


def test_nan_loss_stops_with_step_and_saves_nothing_corrupt(idx_data, tmp_path, capsys, monkeypatch):
    require_scheduler("vp")
    out = tmp_path / "run"
    faults.install(monkeypatch.setattr, nan_in_loss=3)  # no accumulation: the 3rd loss is optimizer step 3's
    run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "6", "--checkpointing_steps", "2"),
               expect_rc=3)
    err = capsys.readouterr().err
    assert "at optimizer step 3" in err and "checkpoint-2" in err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", ".tmp"))) == ["checkpoint-2"]
    assert not (out / "model_index.json").exists() and not (out / "train_summary.json").exists()


@pytest.mark.parametrize("bad, message", [
    (["--data_dir", "/nonexistent/dir"], "does not exist"),
    (["--resolution", "7"], "not divisible by"),
    (["--block_out_channels", "8,12", "--norm_num_groups", "8"], "divisible"),
])
def test_bad_args_fail_before_training(idx_data, tmp_path, capsys, bad, message):
    require_scheduler("vp")
    out = tmp_path / "run"
    argv = ddpm_args(idx_data, out, "--max_train_steps", "2") + bad
    run_script("train_ddpm", argv, expect_rc=2)
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was created: the check ran before the Accelerator / loop


def _same_params(a: Path, b: Path):
    from safetensors.torch import load_file

    sa = load_file(a / "unet" / "diffusion_pytorch_model.safetensors")
    sb = load_file(b / "unet" / "diffusion_pytorch_model.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _killed(out, args, **fault):
    """Run train_ddpm in a subprocess that SIGKILLs itself at the fault (see tests/faults.py)."""
    flags = [x for k, v in fault.items() for x in (f"--{k}", v)]
    proc = run_subprocess([sys.executable, "tests/faults.py", *flags, "--", "train/train_ddpm.py", *args], check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_sigkill_mid_step_and_mid_checkpoint_in_later_epochs_then_resume_is_bit_exact(idx_data, tmp_path):
    """16 examples, 2 optimizer steps per epoch (batch 4, accumulation 2), checkpoints every 3 steps.
    Killed inside step 6 (epoch 2; resumes from checkpoint-3, inside epoch 1), then killed again while
    writing checkpoint-6 (the end of epoch 2), then resumed to step 9: the same weights (trained and EMA),
    optimizer, LR schedule and step count as the uninterrupted run."""
    require_scheduler("vp")
    common = ["--max_train_samples", "16", "--max_train_steps", "9", "--checkpointing_steps", "3",
              "--gradient_accumulation_steps", "2", "--use_ema", "--random_flip", "--dropout", "0.1",
              "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--seed", "7"]
    ref = tmp_path / "ref"
    _, ref_summary = run_script("train_ddpm", ddpm_args(idx_data, ref, *common))

    out = tmp_path / "killed"
    _killed(out, ddpm_args(idx_data, out, *common), kill_in_loss=11)  # micro-step 11 = step 6's first half
    assert [p.name for p in out.glob("*checkpoint-*")] == ["checkpoint-3"]
    resume = ddpm_args(idx_data, out, *common, "--resume_from_checkpoint", "latest")
    _killed(out, resume, kill_in_checkpoint=6)
    assert (out / "checkpoint-3").is_dir() and (out / ".tmp-checkpoint-6").is_dir()
    assert not (out / "checkpoint-6").exists()

    _, summary = run_script("train_ddpm", resume)
    assert summary["global_step"] == 9
    assert not (out / ".tmp-checkpoint-6").exists()
    assert summary["param_checksums"] == ref_summary["param_checksums"]
    _same_params(ref, out)  # the saved (EMA) weights too
    ref_state = json.loads((ref / "checkpoint-9" / "training_state.json").read_text())
    state = json.loads((out / "checkpoint-9" / "training_state.json").read_text())
    for s in (ref_state, state):  # Python's own RNG (never drawn from) and the clock are allowed to differ
        s["files"].pop("random_states_0.pkl")
        assert s.pop("train_seconds") > 0
    assert state == ref_state
    # the training time counts every kept step: checkpoint-3's time (first run) plus the last run's
    assert summary["train_seconds"] > summary["train_seconds_this_run"] > 0
    assert abs(ref_summary["train_seconds"] - ref_summary["train_seconds_this_run"]) < 1.0


def test_sigkill_at_arbitrary_moment_then_resume(idx_data, tmp_path):
    """An external SIGKILL as soon as the first checkpoint exists (whatever the process is doing)."""
    require_scheduler("vp")
    import subprocess

    common = ["--max_train_steps", "8", "--checkpointing_steps", "1", "--seed", "3"]
    ref = tmp_path / "ref"
    _, ref_summary = run_script("train_ddpm", ddpm_args(idx_data, ref, *common))
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "train/train_ddpm.py", *ddpm_args(idx_data, out, *common)], cwd=REPO,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (out / "checkpoint-2").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, *common, "--resume_from_checkpoint", "latest"))
    assert summary["global_step"] == 8
    assert summary["param_checksums"] == ref_summary["param_checksums"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ranks_stay_identical_and_resume_exactly(idx_data, tmp_path):
    """A real 2-process data-parallel run (torchrun + gloo on CPU): world size 2, ranks see different batches,
    and end with bit-identical parameters. 64 examples, batch 4, accumulation 2: 4 optimizer steps per epoch;
    a 2-process run resumed from checkpoint-5 (inside epoch 1) ends with the same bits."""
    require_scheduler("vp")

    def torchrun(out, *extra):
        proc = run_subprocess([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", _free_port(), "tests/ddp_teardown_probe.py", "train/train_ddpm.py",
                               *ddpm_args(idx_data, out, "--max_train_steps", "6", "--checkpointing_steps", "5",
                                          "--gradient_accumulation_steps", "2", "--use_ema", "--random_flip",
                                          "--ddp_timeout", "120", *extra)])
        # the wrappers are gone before the group is destroyed: a DDP reducer freed later holds the gloo
        # group's last reference and joins its threads with the GIL held (rank 0 once hung there)
        for rank in (0, 1):
            assert (f"rank {rank} after end_training: 0 live DDP wrappers, process group initialized: False"
                    in proc.stdout), proc.stdout
        return json.loads((out / "train_summary.json").read_text())

    out = tmp_path / "ddp"
    summary = torchrun(out)
    assert summary["num_processes"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    assert len(summary["param_checksums"]) == 2
    assert summary["param_checksums"][0] == summary["param_checksums"][1]
    assert (out / "checkpoint-5" / "random_states_1.pkl").exists()  # both ranks wrote their part
    assert json.loads((out / "checkpoint-5" / "training_state.json").read_text())["epoch"] == 1

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-5", resumed / "checkpoint-5")
    assert torchrun(resumed, "--resume_from_checkpoint", "latest")["param_checksums"] == summary["param_checksums"]
    _same_params(out, resumed)
