"""Exact resume in any epoch, for every training script.

Each script trains 8 examples in 2 optimizer steps per epoch for 7 steps (3.5 epochs), checkpointing
every step. A run resumed from the checkpoint of step 1 (inside epoch 0), 4 (the start of epoch 2) and
5 (inside epoch 2) must end with the same bits as the uninterrupted one: trained weights of every
module, the saved (EMA) weights, the optimizer state and the LR schedule. Before the fix, Accelerate's
loader replayed epoch 0's shuffle after a resume and the weights differed (max |dw| 2e-4 for train_ddpm).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_train_common import FAST, TINY_UNET, idx_data, require_scheduler, run_script  # noqa: F401

RESUME_FROM = (1, 4, 5)
COMMON = [*FAST, "--max_train_samples", "8", "--max_train_steps", "7", "--checkpointing_steps", "1", "--seed", "11"]


def _vae(tmp: Path) -> Path:
    from hf_ddm.models.vae import VAE

    torch.manual_seed(0)
    VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), norm_num_groups=4,
        sample_size=16, scaling_factor=0.9).save_pretrained(tmp / "vae")
    return tmp / "vae"


def script_args(script: str, data, tmp: Path) -> list:
    """The flags of each script's resume case: EMA, flips, dropout, accumulation, two modules, the latent cache."""
    if script == "train_ddpm":
        return ["--data_dir", data, "--channels", "1", "--resolution", "8", *TINY_UNET, "--train_batch_size", "2",
                "--gradient_accumulation_steps", "2", "--use_ema", "--random_flip", "--dropout", "0.1",
                "--lr_warmup_steps", "2"]
    if script == "train_vae":
        return ["--data_dir", data, "--channels", "1", "--resolution", "8", "--block_out_channels", "8,16",
                "--norm_num_groups", "4", "--latent_channels", "2", "--train_batch_size", "4", "--use_ema",
                "--random_flip"]
    if script == "train_ldm":  # text conditioning: a second trained module (the text encoder)
        return ["--vae_path", _vae(tmp), "--data_dir", data, "--resolution", "16", *TINY_UNET,
                "--attention_levels", "1", "--train_batch_size", "4", "--conditioning", "text",
                "--text_hidden_size", "16", "--text_heads", "2", "--random_flip", "--use_ema",
                "--latent_cache_dir", tmp / "latent_cache"]
    if script == "train_classifier":
        return ["--data_dir", data, "--channels", "1", "--resolution", "8", *TINY_UNET, "--train_batch_size", "4",
                "--random_flip"]
    raise KeyError(script)


def _final_state(out: Path) -> dict:
    state = json.loads((out / "checkpoint-7" / "training_state.json").read_text())
    files = state.pop("files")
    assert state.pop("train_seconds") > 0  # the clock: the one counter that differs between the runs
    # the RNG files hold Python's own generator, which the loop never draws from; everything else must match
    state["sha256"] = {k: v["sha256"] for k, v in files.items() if not k.startswith("random_states")}
    return state


def _saved_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return {str(p.relative_to(out)): load_file(p) for p in sorted(out.rglob("*.safetensors"))
            if not p.relative_to(out).parts[0].startswith(("checkpoint", "latent_cache"))}


def assert_same_run(ref: Path, ref_summary: dict, out: Path, summary: dict) -> None:
    assert summary["global_step"] == ref_summary["global_step"]
    assert summary["param_checksums"] == ref_summary["param_checksums"]
    a, b = _saved_weights(ref), _saved_weights(out)
    assert a and a.keys() == b.keys()
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k, (a[f][k] - b[f][k]).abs().max().item())
    assert _final_state(out) == _final_state(ref)


@pytest.mark.parametrize("script", ["train_ddpm", "train_vae", "train_ldm", "train_classifier"])
def test_resume_from_any_epoch_is_bit_exact(idx_data, tmp_path, script):
    require_scheduler("vp")
    args = script_args(script, idx_data, tmp_path)
    ref = tmp_path / "ref"
    _, ref_summary = run_script(script, [*args, *COMMON, "--output_dir", ref])
    epochs = [json.loads((ref / f"checkpoint-{s}" / "training_state.json").read_text())["epoch"] for s in RESUME_FROM]
    assert epochs == [0, 1, 2]  # inside epoch 0; the end of epoch 1 (resumes at the start of epoch 2); inside epoch 2
    for step in RESUME_FROM:
        out = tmp_path / f"from{step}"
        out.mkdir()
        shutil.copytree(ref / f"checkpoint-{step}", out / f"checkpoint-{step}")
        _, summary = run_script(script, [*args, *COMMON, "--output_dir", out, "--resume_from_checkpoint", "latest"])
        assert_same_run(ref, ref_summary, out, summary)
