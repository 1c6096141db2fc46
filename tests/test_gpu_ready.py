"""The GPU code paths, exercised on the CPU at tiny sizes: bf16, channels_last, torch.compile, DataLoader
workers and pinned memory, the wall-clock budget, whole-pipeline dtype moves and model CPU offload."""

from __future__ import annotations

import json
import types

import pytest
import torch

from test_train_common import FAST, TINY_UNET, idx_data, load_script, run_script  # noqa: F401

SCRIPTS = ["train_ddpm", "train_ldm", "train_vae", "train_classifier"]


def ddpm_args(data, out, *extra):
    return ["--data_dir", data, "--channels", "1", "--resolution", "8", *TINY_UNET, *FAST,
            "--train_batch_size", "4", "--output_dir", out, *extra]


# --- flags ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_takes_the_gpu_flags(script):
    parser = load_script(script).build_parser()
    required = ["--vae_path", "v"] if script == "train_ldm" else []
    args = parser.parse_args([*required, "--mixed_precision", "fp16", "--allow_tf32", "--channels_last",
                              "--torch_compile", "--torch_compile_mode", "max-autotune", "--dataloader_num_workers",
                              "2", "--no-dataloader_pin_memory", "--max_train_seconds", "60"])
    assert (args.mixed_precision, args.allow_tf32, args.channels_last, args.torch_compile) == ("fp16", True, True, True)
    assert (args.torch_compile_mode, args.dataloader_num_workers) == ("max-autotune", 2)
    assert args.dataloader_pin_memory is False
    assert args.max_train_seconds == 60.0 and parser.parse_args(required).mixed_precision is None


@pytest.mark.parametrize("bad, name", [(["--max_train_seconds", "0"], "--max_train_seconds"),
                                       (["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
                                       (["--torch_compile_mode", "default"], "--torch_compile"),
                                       (["--mixed_precision", "fp8"], "--mixed_precision")])
def test_bad_gpu_flags_are_refused_naming_the_argument(bad, name, capsys):
    from hf_ddm.training import parse_args

    with pytest.raises(SystemExit):
        parse_args(load_script("train_ddpm").build_parser(), ["--data_dir", "x", *bad])
    assert name in capsys.readouterr().err


def test_apply_performance_flags_on_the_networks_and_the_loader():
    from hf_ddm.models import UNet, VAE
    from hf_ddm.training.loop import apply_performance_flags

    unet = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), norm_num_groups=4, attention_head_dim=8)
    vae = VAE(in_channels=1, latent_channels=2, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4)
    accelerator = types.SimpleNamespace(device=torch.device("cpu"),
                                        dataloader_config=types.SimpleNamespace(non_blocking=False))
    args = types.SimpleNamespace(channels_last=True, torch_compile=False, dataloader_num_workers=3,
                                 dataloader_pin_memory=None)
    kwargs = apply_performance_flags(args, accelerator, {"unet": unet}, {"vae": vae})
    conv = [m.weight for m in (*unet.modules(), *vae.modules()) if isinstance(m, torch.nn.Conv2d)]
    assert conv and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv)
    # pinned memory is automatic on CUDA only; workers persist across epochs
    assert kwargs == {"num_workers": 3, "pin_memory": False, "persistent_workers": True}
    assert accelerator.dataloader_config.non_blocking is False
    args.dataloader_pin_memory, args.dataloader_num_workers = True, 0
    assert apply_performance_flags(args, accelerator, {}, {}) == {"num_workers": 0, "pin_memory": True,
                                                                 "persistent_workers": False}
    assert accelerator.dataloader_config.non_blocking is True  # pinned batches are copied asynchronously


# --- training ----------------------------------------------------------------------------------------------

def test_bf16_channels_last_workers_train_and_save_a_loadable_folder(idx_data, tmp_path):
    out = tmp_path / "run"
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "3", "--use_ema",
                                                    "--mixed_precision", "bf16", "--channels_last",
                                                    "--dataloader_num_workers", "1", "--checkpointing_steps", "2"))
    assert summary["global_step"] == 3 and summary["mixed_precision"] == "bf16"
    assert torch.isfinite(torch.tensor(summary["mean_loss_last_10"]))
    from hf_ddm.pipelines import PixelDiffusionPipeline

    pipe = PixelDiffusionPipeline.from_pretrained(out)  # saved weights (channels_last in training) load back
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)
    # the checkpoint written mid-run (channels_last weights) resumes
    _, resumed = run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "3", "--use_ema",
                                                    "--resume_from_checkpoint", str(out / "checkpoint-2")))
    assert resumed["global_step"] == 3


def test_max_train_seconds_stops_early_and_still_saves(idx_data, tmp_path):
    out = tmp_path / "run"
    # A budget far below one step's duration: the run stops after its first optimizer step.
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "50", "--use_ema",
                                                    "--max_train_seconds", "1e-6"))
    assert summary["global_step"] == 1 and summary["stopped_by_time_budget"] is True
    assert json.loads((out / "train_summary.json").read_text())["stopped_by_time_budget"] is True
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_torch_compile_training_step_and_pipeline_unet(idx_data, tmp_path):
    """The one compile test: the 'eager' backend runs dynamo's capture (what can break) without code generation,
    which takes minutes on 2 cores; the GPU suite runs inductor."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / "run"
    _, summary = run_script("train_ddpm", ddpm_args(idx_data, out, "--max_train_steps", "2", "--torch_compile",
                                                    "--torch_compile_backend", "eager", "--mixed_precision", "bf16"))
    assert summary["global_step"] == 2
    assert counters["stats"]["unique_graphs"] >= 1, "the training step was not compiled"
    # in-place compilation: the saved parameter names are the plain module's
    from safetensors.torch import load_file

    names = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert names and not any("_orig_mod" in k for k in names)

    from hf_ddm.pipelines import PixelDiffusionPipeline

    pipe = PixelDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),  # noqa: E731
                       output_type="pt").images
    eager = run()
    counters.clear()
    assert pipe.compile_unet(backend="eager") is pipe
    compiled = run()
    assert counters["stats"]["unique_graphs"] >= 1, "compile_unet did not compile the U-Net"
    torch.testing.assert_close(compiled, eager)
    torch._dynamo.reset()


# --- pipelines ---------------------------------------------------------------------------------------------

def _pipelines():
    from test_pipelines import tiny_text_pipe, tiny_unet

    from hf_ddm.models import NoisyClassifier
    from hf_ddm.pipelines import ClassifierGuidedPipeline, PixelDiffusionPipeline
    from hf_ddm.schedulers import VPScheduler

    torch.manual_seed(0)
    clf = NoisyClassifier(in_channels=3, num_classes=3, sample_size=8, block_out_channels=(16,), layers_per_block=1,
                          norm_num_groups=8, attention_levels=(), attention_head_dim=8)
    return {
        "pixel": (PixelDiffusionPipeline(tiny_unet(), VPScheduler(num_train_timesteps=50)), {"batch_size": 2}),
        "text": (tiny_text_pipe(), {"prompt": ["a photo of a bag"], "guidance_scale": 3.0}),
        "guided": (ClassifierGuidedPipeline(unet=tiny_unet(), classifier=clf,
                                            scheduler=VPScheduler(num_train_timesteps=50)),
                   {"class_labels": [1, 2], "guidance_scale": 2.0}),
    }


def _sample(pipe, kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images


@pytest.mark.parametrize("name", ["pixel", "text", "guided"])
def test_whole_pipeline_moves_to_bf16(name):
    pipe, kwargs = _pipelines()[name]
    reference = _sample(pipe, kwargs)
    pipe.to("cpu", torch.bfloat16)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert modules and all(p.dtype == torch.bfloat16 for m in modules for p in m.parameters())
    images = _sample(pipe, kwargs)
    assert images.dtype == torch.float32 and images.shape == reference.shape and torch.isfinite(images).all()
    # same noise, same network in lower precision: close to the fp32 images, not something else
    assert (images - reference).abs().mean() < 0.05


@pytest.mark.parametrize("name", ["pixel", "text", "guided"])
def test_model_cpu_offload_covers_every_network(name):
    pipe, kwargs = _pipelines()[name]
    networks = {k for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    # every network is in the offload order (one left out would stay on the CPU during sampling)
    assert networks <= set(pipe.model_cpu_offload_seq.split("->"))
    reference = _sample(pipe, kwargs)
    pipe.enable_model_cpu_offload(device="cpu")  # the hooks are the same on a GPU; only the device differs
    hooked = {k for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)
              and getattr(v, "_hf_hook", None) is not None}
    assert hooked == networks
    torch.testing.assert_close(_sample(pipe, kwargs), reference)
