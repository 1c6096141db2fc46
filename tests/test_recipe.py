"""train/fashion_mnist_recipe.sh: every training stage's command parses, and STEPS_SCALE / BATCH_SCALE /
LR_SCALE reach every stage (LAUNCH=echo prints the commands instead of running them)."""

from __future__ import annotations

import os
import shlex
import subprocess

from test_train_common import REPO, load_script

STAGES = {"vae": "train_vae", "ldm_class": "train_ldm", "ldm_class_more": "train_ldm", "classifier": "train_classifier",
          "guided_unet": "train_ldm", "ldm_text": "train_ldm", "ldm_text_more": "train_ldm",
          "ldm_text_more2": "train_ldm", "vae_decoder": "train_vae", "ddpm": "train_ddpm", "sde": "train_ddpm"}


def _commands(tmp_path, **env):
    full = dict(os.environ, LAUNCH="echo", WORK=str(tmp_path / "work"), **env)
    out = subprocess.run(["bash", "train/fashion_mnist_recipe.sh", *STAGES], cwd=REPO, env=full, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    assert len(out) == len(STAGES)
    return {stage: shlex.split(line) for stage, line in zip(STAGES, out)}


def _parsed(stage, argv):
    script = argv[0]
    assert script == f"train/{STAGES[stage]}.py"
    return load_script(STAGES[stage]).build_parser().parse_args(argv[1:])


def test_recipe_stages_parse_and_scale(tmp_path):
    base = {s: _parsed(s, a) for s, a in _commands(tmp_path).items()}
    scaled = {s: _parsed(s, a) for s, a in _commands(tmp_path, STEPS_SCALE="0.5", BATCH_SCALE="4", LR_SCALE="2",
                                                      EXTRA_ARGS="--max_train_samples 100").items()}
    for s in STAGES:
        b, x = base[s], scaled[s]
        assert x.max_train_steps == b.max_train_steps // 2 and x.train_batch_size == 4 * b.train_batch_size, s
        assert abs(x.learning_rate - 2 * b.learning_rate) < 1e-12 and x.max_train_samples == 100, s
        assert x.validation_steps == b.validation_steps // 2 and b.resume_from_checkpoint == "latest", s
    vae = base["vae"]
    assert vae.kl_weight == 1e-6 and vae.disc_weight > 0 and 0 < vae.disc_start < vae.max_train_steps
    assert scaled["vae"].disc_start == vae.disc_start // 2
    decoder = base["vae_decoder"]  # fine-tunes the decoder of the vae stage's output, its latents unchanged
    assert decoder.train_decoder_only and decoder.pretrained_model_path == base["ldm_class"].vae_path
    assert decoder.disc_weight > 0 and decoder.disc_start == 0
    more = base["ldm_class_more"]  # continues the class stage's U-Net on the same latents, into its own folder
    assert more.pretrained_model_path == base["ldm_class"].output_dir != more.output_dir
    assert more.vae_path == base["ldm_class"].vae_path and more.conditioning == "class"
    assert more.learning_rate < base["ldm_class"].learning_rate
    uncond = base["guided_unet"]  # guided's U-Net: the class U-Net continued on the null class alone
    assert uncond.pretrained_model_path == base["ldm_class"].output_dir != uncond.output_dir
    assert uncond.cond_drop_prob == 1 and uncond.guidance_scale == 0 and uncond.conditioning == "class"
    text = base["ldm_text"]
    text_more = base["ldm_text_more"]  # the text U-Net (and its encoder, read from the same folder) continued
    assert text_more.pretrained_model_path == text.output_dir != text_more.output_dir
    assert text_more.conditioning == "text" and text_more.caption_style == text.caption_style
    assert text_more.validation_prompts == text.validation_prompts and text_more.learning_rate < text.learning_rate
    text_more2 = base["ldm_text_more2"]  # and continued once more from the second run, at a lower rate
    assert text_more2.pretrained_model_path == text_more.output_dir != text_more2.output_dir
    assert text_more2.conditioning == "text" and text_more2.caption_style == text.caption_style
    assert text_more2.learning_rate < text_more.learning_rate and text_more2.use_ema
    assert text.conditioning == "text" and text.caption_style == "varied" and text.validation_prompts
    assert text.vae_path == base["ldm_class"].vae_path == base["classifier"].vae_path
    assert text.latent_cache_dir == base["ldm_class"].latent_cache_dir  # one cache (keyed by VAE + data)


def test_first_stage_switch_keeps_the_latent_models_apart(tmp_path):
    """FIRST_STAGE=vae8: the latent stages encode with the vae8 run and write their own folders, so the
    models on the shipped first stage are kept (the vae8 stage itself writes where FIRST_STAGE reads)."""
    work = tmp_path / "work"
    full = dict(os.environ, LAUNCH="echo", WORK=str(work), FIRST_STAGE="vae8")
    lines = subprocess.run(["bash", "train/fashion_mnist_recipe.sh", "vae8", "ldm_class", "classifier", "ldm_text"],
                           cwd=REPO, env=full, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    vae8, ldm, clf, text = (shlex.split(line) for line in lines)
    vae8 = load_script("train_vae").build_parser().parse_args(vae8[1:])
    assert vae8.latent_channels == 8
    # the shipped first stage is step 4,000 of the 12,000-step schedule, before its adversarial term starts
    assert vae8.stop_at_step == 4000 < vae8.max_train_steps and vae8.disc_start >= vae8.stop_at_step
    for argv, script, out in ((ldm, "train_ldm", "ldm_class_vae8"), (clf, "train_classifier", "classifier_vae8"),
                              (text, "train_ldm", "ldm_text_vae8")):
        args = load_script(script).build_parser().parse_args(argv[1:])
        assert args.vae_path == vae8.output_dir == str(work / "vae8") and args.output_dir == str(work / out)
