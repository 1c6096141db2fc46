"""train/train_ldm.py: unconditional / class / text conditioning, the latent cache, bad VAE folders."""

from pathlib import Path

import pytest
import torch

from hf_ddm.training import load_image_dataset
from test_train_common import FAST, TINY_UNET, _args, idx_data, require_scheduler, run_script  # noqa: F401


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    from hf_ddm.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), norm_num_groups=4,
              sample_size=16, scaling_factor=0.9)
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d)
    return d


def ldm_args(data, vae, out, *extra):
    return ["--vae_path", vae, "--data_dir", data, "--resolution", "16", *TINY_UNET, "--attention_levels", "1", *FAST,
            "--train_batch_size", "8", "--output_dir", out, "--text_hidden_size", "16", "--text_heads", "2", *extra]


@pytest.mark.parametrize("conditioning", ["none", "class", "text"])
def test_ldm_end_to_end_and_pipeline_loads(idx_data, vae_dir, tmp_path, conditioning, capfd):
    require_scheduler("vp")
    out = tmp_path / "ldm"
    _, summary = run_script("train_ldm", ldm_args(idx_data, vae_dir, out, "--conditioning", conditioning,
                                                  "--max_train_steps", "2", "--validation_steps", "1",
                                                  "--random_flip", "--use_ema", "--latent_cache_dir",
                                                  tmp_path / f"cache_{conditioning}"))
    assert summary["global_step"] == 2 and (out / "samples" / "step_0000002.png").exists()
    # It says what it is doing while it builds the latent cache, and, last, where the pipeline is and how to load it.
    printed = capfd.readouterr()
    assert "latent cache: encoding" in printed.out and "img/s" in printed.err  # the line, then tqdm's bar
    last = printed.out.strip().splitlines()[-3:]
    assert last[0] == f"saved the pipeline in {out}", last
    assert f"DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)" in last[1]
    assert f"LatentDiffusionPipeline.from_pretrained({str(out)!r})" in last[2]
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)  # the folder carries its pipeline code
    assert type(pipe).__name__ == "LatentDiffusionPipeline"
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 2
    # Latents are not confined to [-1, 1]: x0 clipping (DDPM's default) would wreck DDIM-style samplers.
    assert pipe.scheduler.config.clip_sample is False
    if conditioning == "text":
        assert pipe.text_encoder is not None and pipe.tokenizer("a photo of a 3").input_ids[0] == pipe.tokenizer.bos_token_id
    if conditioning == "class":
        assert pipe.unet.config.num_class_embeds == 10
    dataset_names = load_image_dataset(_args(data_dir=str(idx_data), resolution=16), channels=1)[1].class_names
    assert pipe.config.class_names == (None if conditioning == "none" else dataset_names)
    assert not (out / "class_names.json").exists()
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card
    if conditioning == "text":
        assert "- prompt template: `a photo of a {}`" in card  # the prompt template lives in the model card
        images = pipe(prompt=f"a photo of a {dataset_names[1]}", guidance_scale=2.0, num_inference_steps=2,
                      output_type="np").images
    else:
        images = pipe(class_labels=dataset_names[:2] if conditioning == "class" else None,
                      batch_size=None if conditioning == "class" else 2, num_inference_steps=2,
                      output_type="np").images
    assert images.shape[1:] == (16, 16, 1)


def test_cached_latents_equal_fresh_encodings_and_key_tracks_vae(idx_data, vae_dir, tmp_path):
    from safetensors.torch import load_file

    from hf_ddm.models.vae import VAE
    from hf_ddm.training.data import collate

    require_scheduler("vp")
    cache = tmp_path / "cache"
    out = tmp_path / "ldm"
    run_script("train_ldm", ldm_args(idx_data, vae_dir, out, "--max_train_steps", "1", "--latent_cache_dir", cache,
                                     "--random_flip"))
    files = list(cache.glob("latents-*.safetensors"))
    assert len(files) == 1
    cached = load_file(files[0])
    vae = VAE.from_pretrained(vae_dir).eval()
    ds, _ = load_image_dataset(_args(data_dir=str(idx_data), resolution=16), channels=1)
    x = collate([ds[i] for i in range(len(ds))])["pixel_values"]
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        post_flip = vae.encode(x.flip(-1)).latent_dist
    torch.testing.assert_close(cached["mean"], post.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached["logvar"], post.logvar, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached["mean_flip"], post_flip.mean, rtol=1e-5, atol=1e-6)
    assert cached["class_labels"].tolist() == [i % 4 for i in range(64)]

    # same VAE + data: reused (no new file); another VAE: a new key
    run_script("train_ldm", ldm_args(idx_data, vae_dir, tmp_path / "again", "--max_train_steps", "1",
                                     "--latent_cache_dir", cache, "--random_flip"))
    assert len(list(cache.glob("latents-*.safetensors"))) == 1
    vae2 = VAE.from_pretrained(vae_dir)
    with torch.no_grad():
        next(vae2.parameters()).add_(0.01)
    vae2.save_pretrained(tmp_path / "vae2")
    run_script("train_ldm", ldm_args(idx_data, tmp_path / "vae2", tmp_path / "other", "--max_train_steps", "1",
                                     "--latent_cache_dir", cache, "--random_flip"))
    assert len(list(cache.glob("latents-*.safetensors"))) == 2


def test_ldm_without_cache_runs(idx_data, vae_dir, tmp_path):
    require_scheduler("vp")
    _, s = run_script("train_ldm", ldm_args(idx_data, vae_dir, tmp_path / "ldm", "--max_train_steps", "2",
                                            "--no_latent_cache", "--conditioning", "class"))
    assert s["global_step"] == 2 and not (tmp_path / "ldm" / "latent_cache").exists()


def test_bad_vae_folder_fails_before_training(idx_data, vae_dir, tmp_path, capsys):
    from hf_ddm.models.unet import UNet

    not_a_vae = tmp_path / "unet"
    UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
         attention_levels=(), norm_num_groups=4, attention_head_dim=8).save_pretrained(not_a_vae)
    out = tmp_path / "ldm"
    run_script("train_ldm", ldm_args(idx_data, not_a_vae, out, "--max_train_steps", "1"), expect_rc=2)
    assert "is not a VAE folder" in capsys.readouterr().err and not out.exists()
    run_script("train_ldm", ldm_args(idx_data, tmp_path / "missing", out, "--max_train_steps", "1"), expect_rc=2)
    assert "is not a folder" in capsys.readouterr().err
    # image size the VAE + U-Net cannot take: 12 / 2 = 6 is fine for the VAE, not divisible for 2 more levels
    run_script("train_ldm", ldm_args(idx_data, vae_dir, out, "--max_train_steps", "1", "--resolution", "12",
                                     "--block_out_channels", "8,16,16"), expect_rc=2)
    assert "latent size" in capsys.readouterr().err and not out.exists()


def test_cond_drop_prob_one_trains_the_null_class_alone(idx_data, vae_dir, tmp_path, capsys):
    """--cond_drop_prob 1 (the guided stage's unconditional U-Net, continued from a class model): every batch
    is the null class, so no real class's embedding row moves (no weight decay by default) and the null row does."""
    from hf_ddm.models.unet import UNet

    require_scheduler("vp")
    first, second = tmp_path / "class", tmp_path / "uncond"
    common = ("--conditioning", "class", "--latent_cache_dir", tmp_path / "cache")
    run_script("train_ldm", ldm_args(idx_data, vae_dir, first, "--max_train_steps", "1", *common))
    run_script("train_ldm", ldm_args(idx_data, vae_dir, second, "--max_train_steps", "3", "--cond_drop_prob", "1",
                                     "--pretrained_model_path", first, "--learning_rate", "1e-2", *common))
    before = UNet.from_pretrained(first / "unet").class_embedding.weight.detach()
    after = UNet.from_pretrained(second / "unet").class_embedding.weight.detach()
    torch.testing.assert_close(after[:-1], before[:-1], rtol=0, atol=0)
    assert (after[-1] - before[-1]).abs().max() > 1e-4
    run_script("train_ldm", ldm_args(idx_data, vae_dir, tmp_path / "bad", "--cond_drop_prob", "1.5", *common),
               expect_rc=2)
    assert "--cond_drop_prob must be in [0, 1], got 1.5" in capsys.readouterr().err
