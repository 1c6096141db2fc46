"""train/train_ddpm.py end to end: tiny U-Net, 16x16 synthetic IDX data, a few steps each."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

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


def test_nan_loss_stops_with_step_and_saves_nothing_corrupt(idx_data, tmp_path, capsys):
    require_scheduler("vp")
    out = tmp_path / "run"
    run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "6", "--checkpointing_steps", "2",
                                       "--_inject_nan_at_step", "3"), expect_rc=3)
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


def test_kill_during_checkpoint_write_then_resume_matches_uninterrupted(idx_data, tmp_path):
    """SIGKILL half-way through writing checkpoint-4 (mid-epoch, with gradient accumulation and EMA);
    `--resume_from_checkpoint latest` continues from checkpoint-2 to the same parameters, LR and step count."""
    require_scheduler("vp")
    common = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--gradient_accumulation_steps", "2",
              "--use_ema", "--random_flip", "--dropout", "0.1", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2",
              "--seed", "7"]
    ref = tmp_path / "ref"
    _, ref_summary = run_script("train_ddpm", ddpm_args(idx_data, ref, *common))

    out = tmp_path / "killed"
    proc = run_subprocess([sys.executable, "train/train_ddpm.py", *ddpm_args(idx_data, out, *common)],
                          env={"HF_DDM_FAULT": "kill_during_checkpoint:4"}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "checkpoint-2").is_dir() and (out / ".tmp-checkpoint-4").is_dir()
    assert not (out / "checkpoint-4").exists()

    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, *common, "--resume_from_checkpoint", "latest"))
    assert summary["global_step"] == 6
    assert not (out / ".tmp-checkpoint-4").exists()
    assert summary["param_checksums"] == ref_summary["param_checksums"]
    _same_params(ref, out)  # the saved (EMA) weights too
    ref_state = json.loads((ref / "checkpoint-6" / "training_state.json").read_text())
    assert json.loads((out / "checkpoint-6" / "training_state.json").read_text()) == ref_state


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


def test_two_process_gloo_ranks_stay_identical(idx_data, tmp_path):
    """A real 2-process data-parallel run (torchrun + gloo on CPU): world size 2, ranks see different batches,
    and end with bit-identical parameters."""
    require_scheduler("vp")
    out = tmp_path / "ddp"
    run_subprocess([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    _free_port(), "train/train_ddpm.py",
                    *ddpm_args(idx_data, out, "--max_train_steps", "3", "--checkpointing_steps", "2",
                               "--gradient_accumulation_steps", "2", "--use_ema", "--random_flip")])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    assert len(summary["param_checksums"]) == 2
    assert summary["param_checksums"][0] == summary["param_checksums"][1]
    assert (out / "checkpoint-2" / "random_states_1.pkl").exists()  # both ranks wrote their part
