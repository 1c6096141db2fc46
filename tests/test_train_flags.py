"""Flags as diffusers' example scripts name them (train_unconditional.py, train_text_to_image.py): the
aliases mean the same thing, the flags that cannot apply are refused with the reason, and pretrained paths
take a Hub id through the Hugging Face cache."""

import os
import shutil

import pytest
import torch
from huggingface_hub import constants

from test_train_common import load_script


def parse(script, *argv):
    from hf_ddm.training import parse_args

    return parse_args(load_script(script).build_parser(), [str(a) for a in argv])


def test_diffusers_names_set_the_same_options():
    a = parse("train_ddpm", "--num_train_epochs", 3, "--ddpm_num_steps", 500, "--ddpm_beta_schedule",
              "squaredcos_cap_v2", "--eval_batch_size", 9, "--train_data_dir", "imgs", "--center_crop",
              "--random_flip")
    assert (a.num_epochs, a.num_train_timesteps, a.beta_schedule, a.num_validation_images, a.data_dir) == \
        (3, 500, "squaredcos_cap_v2", 9, "imgs")
    assert a.center_crop and a.random_flip and a.image_fit == "resize"  # crops are centred: the only kind here


@pytest.mark.parametrize("flag, reason", [
    ("--enable_xformers_memory_efficient_attention", "scaled_dot_product_attention"),
    ("--use_8bit_adam", "8-bit Adam"),
])
def test_flags_that_cannot_apply_are_refused_with_the_reason(flag, reason, capsys):
    with pytest.raises(SystemExit):
        parse("train_ddpm", flag)
    err = capsys.readouterr().err
    assert f"{flag} cannot apply" in err and reason in err
    if flag == "--use_8bit_adam" and not torch.cuda.is_available():
        assert "no CUDA device" in err


def _cache_repo(cache, repo_id, folder):
    """``folder`` as the HF cache holds a downloaded repo (refs/main -> snapshots/<commit>/...)."""
    commit = "1" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_vae_path_and_pretrained_model_path_take_hub_ids_from_the_cache(tmp_path, monkeypatch):
    from hf_ddm.models import VAE, UNet
    from hf_ddm.training import ConfigError
    from hf_ddm.training.components import build_model, load_frozen_vae

    torch.manual_seed(0)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    vae.save_pretrained(tmp_path / "vae")
    unet = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), norm_num_groups=4, attention_head_dim=8)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    cache = tmp_path / "hub"
    _cache_repo(cache, "someone/tiny-vae", tmp_path / "vae")
    _cache_repo(cache, "someone/tiny-pipe", tmp_path / "pipe")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: the cache alone must serve

    loaded = load_frozen_vae("someone/tiny-vae")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    started = build_model(UNet, {}, "someone/tiny-pipe")  # a pipeline repo: its unet/
    assert all(torch.equal(a, b) for a, b in zip(started.state_dict().values(), unet.state_dict().values()))
    with pytest.raises(ConfigError, match="--vae_path 'someone/not-cached'.*HF_HUB_OFFLINE"):
        load_frozen_vae("someone/not-cached")
    with pytest.raises(ConfigError, match="--pretrained_model_path .* is not a folder"):
        build_model(UNet, {}, os.path.join(str(tmp_path), "missing"))


def test_a_pretrained_start_records_its_architecture_not_the_default_flags(tmp_path):
    """The card and tracker show the flags: a model loaded from --pretrained_model_path puts its own architecture
    there (the ldm_class continuation's card once said block_out_channels [64, 128, 256] of a (64, 128) U-Net)."""
    from hf_ddm.models import UNet
    from hf_ddm.training.components import build_model

    UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
         attention_levels=(1,), mid_block_attention=False, norm_num_groups=4,
         attention_head_dim=8).save_pretrained(tmp_path / "unet")
    args = load_script("train_ddpm").build_parser().parse_args(["--data_dir", "x"])
    assert args.block_out_channels != [8, 16] and not args.no_mid_block_attention
    build_model(UNet, {}, str(tmp_path / "unet"), args)
    assert (args.block_out_channels, args.layers_per_block, args.attention_levels, args.norm_num_groups,
            args.attention_head_dim, args.no_mid_block_attention) == ([8, 16], 1, [1], 4, 8, True)
    fresh = load_script("train_ddpm").build_parser().parse_args(["--data_dir", "x"])
    build_model(UNet, {"block_out_channels": (8, 16), "norm_num_groups": 4, "attention_head_dim": 8}, None, fresh)
    assert fresh.block_out_channels != [8, 16]  # built from the flags: they already say what was built


@pytest.mark.parametrize("scheduler, solver, key, value", [
    ("vp", "ddim", "sampler", "ddim"),  # the scheduler's own name for a solver
    ("vp", "ode_euler", "sampler", "ddim"),  # the registry's name for the same solver
    ("ve", "reverse_diffusion", "predictor", "reverse_diffusion"),  # used to be dropped silently
    ("sde", "ode_heun", "solver", "ode_heun"),
])
def test_solver_flag_sets_the_validation_sampler_under_the_key_its_scheduler_reads(scheduler, solver, key, value):
    from hf_ddm.training.components import build_scheduler

    args = parse("train_ddpm", "--scheduler", scheduler, "--solver", solver,
                 *(["--prediction_type", "score"] if scheduler == "ve" else []))
    assert getattr(build_scheduler(args).config, key) == value


@pytest.mark.parametrize("scheduler, solver", [("vp", "multistep"), ("ve", "ode_euler"), ("sde", "rk45")])
def test_solver_flag_a_scheduler_cannot_run_is_refused_naming_its_solvers(scheduler, solver):
    from hf_ddm.training import ConfigError
    from hf_ddm.training.components import build_scheduler

    args = parse("train_ddpm", "--scheduler", scheduler, "--solver", solver,
                 *(["--prediction_type", "score"] if scheduler == "ve" else []))
    with pytest.raises(ConfigError, match=f"--solver '{solver}'.*one of"):
        build_scheduler(args)


def test_ddp_timeout_reaches_the_process_group_settings(capsys, tmp_path):
    """--ddp_timeout (Trainer's name): the seconds a multi-process collective may wait, handed to Accelerate's
    process-group set-up; 30 minutes by default, as torch's; not a positive number: refused by name."""
    from datetime import timedelta

    from hf_ddm.training.loop import make_accelerator

    from test_train_common import reset_accelerate

    args = parse("train_ddpm", "--ddp_timeout", 90, "--cpu", "--report_to", "none", "--output_dir", tmp_path)
    reset_accelerate()
    try:
        assert make_accelerator(args).init_handler.timeout == timedelta(seconds=90)
    finally:
        reset_accelerate()
    assert parse("train_ddpm").ddp_timeout == 1800
    with pytest.raises(SystemExit):
        parse("train_ddpm", "--ddp_timeout", 0)
    assert "--ddp_timeout must be > 0" in capsys.readouterr().err
