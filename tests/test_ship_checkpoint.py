"""train/ship_checkpoint.py: a trained folder becomes a fp16 Space checkpoint with complete model cards."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hf_ddm.models import VAE, UNet
from hf_ddm.pipelines import LatentDiffusionPipeline
from hf_ddm.schedulers.vp import VPScheduler

REPO = Path(__file__).resolve().parents[1]


def _ship():
    spec = importlib.util.spec_from_file_location("_ship_checkpoint", REPO / "train" / "ship_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture()
def runs(tmp_path):
    torch.manual_seed(0)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    vae_run = tmp_path / "vae_run"
    vae.save_pretrained(vae_run)
    (vae_run / "README.md").write_text(f'# vae\n\n```python\nvae = VAE.from_pretrained("{vae_run}")\n```\n')
    (vae_run / "train_summary.json").write_text(json.dumps({"task": "vae", "global_step": 7,
                                                            "train_seconds_this_run": 60.0}))
    unet = UNet(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(16, 32), layers_per_block=1,
                attention_levels=(1,), norm_num_groups=8, attention_head_dim=8, num_class_embeds=10)
    ldm_run = tmp_path / "ldm_run"
    LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=VPScheduler(num_train_timesteps=50),
                            class_names=[f"c{i}" for i in range(10)]).save_pretrained(ldm_run)
    (ldm_run / "README.md").write_text(f"# ldm\n\ntrained in {ldm_run}\n")
    (ldm_run / "train_summary.json").write_text(json.dumps({"task": "ldm", "global_step": 5,
                                                            "train_seconds_this_run": 30.0}))
    ev = tmp_path / "eval_vae.json"
    ev.write_text(json.dumps({"mse_per_pixel": 0.0123, "kl_nats_per_image": 224.5, "command": "python eval"}))
    return tmp_path, vae_run, ldm_run, ev


def test_ships_fp16_with_cards_for_the_pipeline_and_the_vae(runs):
    tmp, vae_run, ldm_run, ev = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", "bash recipe.sh ldm", "--extra_runs", str(vae_run),
             "--component_card", f"vae={vae_run}", "--component_eval", f"vae={ev}"])
    from safetensors.torch import load_file

    stored = load_file(dest / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    loaded = LatentDiffusionPipeline.from_pretrained(dest)
    assert list(loaded.config.class_names)[0] == "c0"
    card = (dest / "README.md").read_text()
    assert "bash recipe.sh ldm" in card and "vae: 7 steps" in card and str(ldm_run) not in card
    vae_card = (dest / "vae" / "README.md").read_text()
    assert 'VAE.from_pretrained("ldm_class", subfolder="vae")' in vae_card
    assert "mse_per_pixel=0.0123" in vae_card and "python eval" in vae_card and str(vae_run) not in vae_card


def test_ships_the_recommended_sampler_on_the_models_own_schedule(runs):
    tmp, _vae_run, ldm_run, _ = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", "x",
             "--scheduler", '{"solver": "multistep", "time_grid": "uniform", "denoise_final": false}'])
    loaded = LatentDiffusionPipeline.from_pretrained(dest)
    config = loaded.scheduler.config
    assert type(loaded.scheduler).__name__ == "SDEScheduler" and config.time_grid == "uniform"
    assert config.num_train_timesteps == 50 and not config.denoise_final  # the run's 50-step schedule, kept
    torch.testing.assert_close(loaded.scheduler.process.alphas_cumprod.float(),
                               VPScheduler(num_train_timesteps=50).alphas_cumprod)
    assert "scheduler-SDEScheduler" in (dest / "README.md").read_text()


def test_a_continuous_sde_model_keeps_its_process_when_the_sampler_is_chosen(tmp_path):
    """A sub-VP SDE run shipped with --scheduler: the solver changes, the SDE and its parameters do not
    (they once fell back to a discrete linear VP schedule, which the model was not trained on)."""
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.sde import SDEScheduler

    unet = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(1,), norm_num_groups=4, attention_head_dim=8)
    run = tmp_path / "sde_run"
    trained = SDEScheduler(sde="subvp", beta_min=0.2, beta_max=15.0, prediction_type="v_prediction",
                           solver="euler_maruyama")
    PixelDiffusionPipeline(unet=unet, scheduler=trained).save_pretrained(run)
    (run / "README.md").write_text("# sde\n")
    dest = tmp_path / "space" / "sde"
    _ship()([str(run), str(dest), "--command", "x", "--scheduler", '{"solver": "multistep", "time_grid": "log_snr"}'])
    config = PixelDiffusionPipeline.from_pretrained(dest).scheduler.config
    assert (config.sde, config.beta_min, config.beta_max, config.prediction_type) == ("subvp", 0.2, 15.0, "v_prediction")
    assert (config.solver, config.time_grid, config.beta_schedule) == ("multistep", "log_snr", None)


def test_a_component_that_is_not_there_is_named(runs):
    tmp, vae_run, ldm_run, _ = runs
    with pytest.raises(SystemExit, match="text_encoder"):
        _ship()([str(ldm_run), str(tmp / "out"), "--command", "x", "--component_card", f"text_encoder={vae_run}"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        _ship()([str(ldm_run), str(tmp / "out2"), "--command", "x", "--component_card", "vae"])


def test_cards_carry_hub_metadata_and_refresh_keeps_weights(runs):
    from huggingface_hub import ModelCard

    tmp, vae_run, ldm_run, ev = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", f"bash recipe.sh ldm --output_dir {ldm_run}", "--component_card",
             f"vae={vae_run}"])
    data = ModelCard.load(dest / "README.md").data
    assert data.library_name == "diffusers" and data.pipeline_tag == "unconditional-image-generation"
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and "latent-diffusion" in data.tags
    card = (dest / "README.md").read_text()
    assert str(tmp) not in card and 'class_labels=["c0"] * 2, guidance_scale=3.0' in card
    weights = (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (dest / "unet" / "config.json").write_text(
        (dest / "unet" / "config.json").read_text().replace('"_class_name"', f'"_name_or_path": "{tmp}/x", "_class_name"'))
    _ship()(["--refresh", str(dest)])
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert str(tmp) not in (dest / "unet" / "config.json").read_text()
    assert "bash recipe.sh ldm" in (dest / "README.md").read_text()
    assert ModelCard.load(dest / "vae" / "README.md").data.tags[:2] == ["hf_ddm", "diffusers"]


def test_refresh_with_a_missing_eval_file_is_refused_and_the_card_kept(runs, capsys):
    """A mistyped --eval path is refused by name before the folder is touched: the card is kept whole (it was
    emptied: the card was opened for writing before the missing JSON was read)."""
    tmp, _vae_run, ldm_run, _ev = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", "bash recipe.sh ldm"])
    card = (dest / "README.md").read_text()
    with pytest.raises(SystemExit):
        _ship()(["--refresh", str(dest), "--eval", str(tmp / "gone.json")])
    err = capsys.readouterr().err
    assert "--eval: no such file:" in err and "gone.json" in err
    assert (dest / "README.md").read_text() == card and "bash recipe.sh ldm" in card


def test_refresh_swaps_in_a_decoder_fine_tune_and_refuses_a_new_encoder(runs):
    """--refresh --vae: the shipped folder takes a VAE whose encoder and scale equal its own (the U-Net's
    latents are unchanged) with that run's card, and says so in its own card; a VAE with another encoder is
    refused by name and the folder is left as it was."""
    tmp, vae_run, ldm_run, _ev = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", "bash recipe.sh ldm", "--component_card", f"vae={vae_run}"])
    shipped = VAE.from_pretrained(dest / "vae")
    tuned = VAE.from_pretrained(dest / "vae")
    with torch.no_grad():
        for p in tuned.decoder_out.parameters():
            p.add_(0.5)
    tuned_run = tmp / "vae_ft"
    tuned.save_pretrained(tuned_run)
    (tuned_run / "README.md").write_text(f'# vae ft\n\ndecoder only, from {tuned_run}\n')
    (tuned_run / "train_summary.json").write_text(json.dumps({"global_step": 9, "train_seconds_this_run": 120.0}))
    ev = tmp / "eval_ft.json"
    ev.write_text(json.dumps({"fd_reconstructions_vs_test": 0.4}))
    unet_bytes = (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    other = tmp / "vae_other"
    moved = VAE.from_pretrained(tuned_run)
    with torch.no_grad():
        moved.quant_conv.weight.mul_(2)
    moved.save_pretrained(other)
    with pytest.raises(SystemExit, match="quant_conv"):
        _ship()(["--refresh", str(dest), "--vae", str(other), "--command", "x"])
    assert torch.equal(VAE.from_pretrained(dest / "vae").decoder_out.conv.weight, shipped.decoder_out.conv.weight)
    with pytest.raises(SystemExit):  # --vae without the command that made it
        _ship()(["--refresh", str(dest), "--vae", str(tuned_run)])

    _ship()(["--refresh", str(dest), "--vae", str(tuned_run), "--command", "bash recipe.sh vae_decoder",
             "--component_eval", f"vae={ev}"])
    swapped = LatentDiffusionPipeline.from_pretrained(dest).vae
    torch.testing.assert_close(swapped.decoder_out.conv.weight, tuned.decoder_out.conv.weight.half().float())
    assert torch.equal(swapped.encoder_out.conv.weight, shipped.encoder_out.conv.weight)
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet_bytes
    card = (dest / "README.md").read_text()
    assert "bash recipe.sh ldm" in card and "`bash recipe.sh vae_decoder`, 9 steps, 2.0 min" in card
    vae_card = (dest / "vae" / "README.md").read_text()
    assert "decoder only" in vae_card and "fd_reconstructions_vs_test=0.4" in vae_card and str(tmp) not in vae_card
    # a second swap replaces the note instead of adding one; --eval rewrites the Evaluation section
    fresh = tmp / "ldm_eval.json"
    fresh.write_text(json.dumps({"fd_inf": 3.14, "command": "python benchmarks/eval_quality.py ldm_class"}))
    _ship()(["--refresh", str(dest), "--vae", str(tuned_run), "--command", "bash recipe.sh vae_decoder",
             "--eval", str(fresh)])
    card = (dest / "README.md").read_text()
    assert card.count("VAE decoder fine-tuned") == 1 and "fd_inf=3.14" in card and card.count("## Evaluation") == 1


def test_refresh_swaps_in_a_unet_of_the_same_architecture_and_refuses_another(runs):
    """--refresh --unet: the folder takes another folder's U-Net when the configs are equal (the card says so,
    VAE and scheduler untouched); a U-Net of another architecture is refused naming the key, folder unchanged."""
    tmp, vae_run, ldm_run, _ev = runs
    dest = tmp / "space" / "guided"
    _ship()([str(ldm_run), str(dest), "--command", "bash recipe.sh guided", "--component_card", f"vae={vae_run}"])
    before = UNet.from_pretrained(dest / "unet")
    vae_bytes = (dest / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    continued = tmp / "ldm_continued"
    trained = UNet.from_pretrained(ldm_run / "unet")
    with torch.no_grad():
        trained.out.conv.weight.add_(0.25)
    LatentDiffusionPipeline(unet=trained, vae=VAE.from_pretrained(vae_run), scheduler=VPScheduler(num_train_timesteps=50),
                            class_names=[f"c{i}" for i in range(10)]).save_pretrained(continued)
    (continued / "train_summary.json").write_text(json.dumps({"global_step": 40, "train_seconds_this_run": 600.0}))

    wider = tmp / "unet_wider"
    UNet(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(16, 48), layers_per_block=1,
         attention_levels=(1,), norm_num_groups=8, attention_head_dim=8, num_class_embeds=10).save_pretrained(wider)
    with pytest.raises(SystemExit, match="block_out_channels"):
        _ship()(["--refresh", str(dest), "--unet", str(wider), "--command", "x"])
    assert torch.equal(UNet.from_pretrained(dest / "unet").out.conv.weight, before.out.conv.weight)
    with pytest.raises(SystemExit):  # --unet without the command that made it
        _ship()(["--refresh", str(dest), "--unet", str(continued)])

    for _ in range(2):  # a second swap replaces the card's note
        _ship()(["--refresh", str(dest), "--unet", str(continued), "--command", "bash recipe.sh ldm_class (continued)"])
    swapped = LatentDiffusionPipeline.from_pretrained(dest).unet
    torch.testing.assert_close(swapped.out.conv.weight, trained.out.conv.weight.half().float())
    assert not torch.equal(swapped.out.conv.weight, before.out.conv.weight)
    assert (dest / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_bytes
    card = (dest / "README.md").read_text()
    assert card.count("U-Net replaced afterwards") == 1 and str(tmp) not in card
    assert "`bash recipe.sh ldm_class (continued)`, 40 steps, 10.0 min of training" in card


def test_cards_give_the_training_time_over_resumed_runs():
    minutes = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location("_ship_checkpoint", REPO / "train" / "ship_checkpoint.py"))
    minutes.__spec__.loader.exec_module(minutes)
    steps_and_time = minutes._steps_and_time
    assert steps_and_time({"global_step": 900, "train_seconds_this_run": 600.0, "train_seconds": 5400.0}) == \
        "900 steps, 90.0 min of training"
    # resumed from a checkpoint that did not record its time: say that only the last run is counted
    assert steps_and_time({"global_step": 900, "train_seconds_this_run": 600.0, "train_seconds": None}) == \
        "900 steps, 10.0 min of training in its last run (earlier runs' time not recorded)"
    # summaries from before train_seconds existed
    assert steps_and_time({"global_step": 900, "train_seconds_this_run": 600.0}) == "900 steps, 10.0 min of training"


def test_default_guidance_scale_is_set_when_shipped_and_on_refresh(runs):
    """--default_guidance_scale: the scale the folder's evaluations recommend goes into model_index.json and
    the card's usage line, at shipping and again on --refresh (weights untouched); not a finite number, refused."""
    tmp, _vae_run, ldm_run, _ = runs
    dest = tmp / "space" / "ldm_class"
    _ship()([str(ldm_run), str(dest), "--command", "x", "--default_guidance_scale", "2.5"])

    def scale():
        return json.loads((dest / "model_index.json").read_text())["default_guidance_scale"]

    assert scale() == 2.5 and "the pipeline uses 2.5" in (dest / "README.md").read_text()
    before = (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    _ship()(["--refresh", str(dest), "--default_guidance_scale", "4"])
    assert scale() == 4 and "the pipeline uses 4," in (dest / "README.md").read_text()
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="default_guidance_scale"):
        _ship()(["--refresh", str(dest), "--default_guidance_scale", "nan"])
    assert scale() == 4

    def interval():
        return json.loads((dest / "model_index.json").read_text())["default_guidance_interval"]

    assert interval() is None
    _ship()(["--refresh", str(dest), "--default_guidance_interval", "0", "5"])
    assert interval() == [0, 5] and "noise levels σ ≤ 5 (σ: noise over signal), this folder's `default_guidance_interval`" in (dest / "README.md").read_text()
    _ship()(["--refresh", str(dest)])  # kept when not given
    assert interval() == [0, 5] and scale() == 4
    with pytest.raises(ValueError, match="default_guidance_interval"):
        _ship()(["--refresh", str(dest), "--default_guidance_interval", "5", "1"])
    _ship()(["--refresh", str(dest), "--default_guidance_interval", "0.5", "inf"])
    assert interval() == [0.5, None] and "noise levels σ ≥ 0.5 (σ" in (dest / "README.md").read_text()


def _recipe_runs(runs, **env):
    """The recipe's run folders on the vae8 first stage (vae8, ldm_class_vae8, classifier_vae8), `guided_vae8`
    built by the recipe's own guided stage, and the environment the ship script reads (``env`` added)."""
    import os
    import shutil
    import subprocess

    from hf_ddm.models import NoisyClassifier

    tmp, vae_run, ldm_run, ev = runs
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    shutil.copytree(vae_run, work / "vae8")
    shutil.copytree(ldm_run, work / "ldm_class_vae8")
    clf_run = work / "classifier_vae8"
    torch.manual_seed(0)
    NoisyClassifier(in_channels=2, num_classes=10, sample_size=4, block_out_channels=(8, 8), layers_per_block=1,
                    attention_levels=(), mid_block_attention=False, norm_num_groups=4).save_pretrained(clf_run / "classifier")
    (clf_run / "README.md").write_text("# classifier\n\nnoise-aware\n")
    (clf_run / "train_summary.json").write_text(json.dumps({"task": "classifier", "global_step": 3,
                                                            "train_seconds_this_run": 12.0}))
    full = dict(os.environ, WORK=str(work), MODELS=str(tmp / "models"), VAE_EVAL=str(ev), OMP_NUM_THREADS="1",
                FIRST_STAGE="vae8", **env)
    if (work / full.get("CLASS_RUN", "ldm_class_vae8")).is_dir():
        subprocess.run(["bash", "train/fashion_mnist_recipe.sh", "guided"], cwd=REPO, env=full, check=True,
                       capture_output=True, text=True)
    return work, full


def _continued_ldm_run(ldm_run, dest, shift, steps, seconds):
    """A run folder continued from ``ldm_run`` as the recipe writes one: its U-Net moved by ``shift`` (so the
    shipped weights tell the runs apart), a card and a train summary of ``steps`` / ``seconds``."""
    pipe = LatentDiffusionPipeline.from_pretrained(ldm_run)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(shift)
    pipe.save_pretrained(dest)
    (dest / "README.md").write_text("# continued\n")
    (dest / "train_summary.json").write_text(json.dumps({"task": "ldm", "global_step": steps,
                                                         "train_seconds_this_run": seconds}))
    return pipe


def test_the_ship_script_ships_the_three_latent_folders_on_one_first_stage(runs):
    """train/ship_fashion_mnist.sh on runs laid out as the recipe writes them (FIRST_STAGE=vae8): each folder gets
    the saved sampler, its guidance default, a card with the recipe command and every stage's steps, and the
    first stage's card and measurement in vae/ (the classifier's in guided/classifier/)."""
    import subprocess

    from test_pipelines import tiny_text_pipe

    tmp = runs[0]
    work, env = _recipe_runs(runs, GUIDED_SCALE="7")
    tiny_text_pipe().save_pretrained(work / "ldm_text_vae8")
    (work / "ldm_text_vae8" / "README.md").write_text("# text\n")
    models = tmp / "models"
    subprocess.run(["bash", "train/ship_fashion_mnist.sh", "ldm_class", "guided", "ldm_text"], cwd=REPO, env=env,
                   check=True, capture_output=True, text=True)
    scales = {}
    for name in ("ldm_class", "guided", "ldm_text"):
        folder = models / name
        index = json.loads((folder / "model_index.json").read_text())
        scales[name] = index["default_guidance_scale"]
        assert index["default_guidance_interval"] is None, name  # no *_INTERVAL: guidance at every level
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["_class_name"] == "SDEScheduler" and scheduler["time_grid"] == "uniform", name
        card = (folder / "README.md").read_text()
        assert "FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh vae8" in card and "- vae: 7 steps" in card, name
        assert "kl_nats_per_image=224.5" in (folder / "vae" / "README.md").read_text(), name
        assert str(tmp) not in card
        assert "the same weights in ldm_class, ldm_text and guided" in card, name
        assert card.split("---\n")[-1].lstrip().startswith(f"# {name}\n"), name  # not the run's name (ldm_class_vae8)
    assert scales == {"ldm_class": None, "guided": 7.0, "ldm_text": 4.0}
    assert "noise-aware" in (models / "guided" / "classifier" / "README.md").read_text()
    assert "- classifier: 3 steps" in (models / "guided" / "README.md").read_text()


def test_the_ship_script_ships_continued_runs_and_guided_steers_the_continued_class_unet(runs):
    """CLASS_RUN / TEXT_RUN name the continued runs (ldm_class_vae8_more, ldm_text_vae8_more2): ldm_class ships
    its U-Net (at CLASS_SCALE), the recipe's guided stage built with the same CLASS_RUN steers it, and the cards give the recipe
    stages and both runs' steps (the shared task named by run); an unknown run is refused before anything ships."""
    import subprocess

    from test_pipelines import tiny_text_pipe

    tmp, _vae_run, ldm_run, _ev = runs
    (tmp / "work").mkdir()
    more = _continued_ldm_run(ldm_run, tmp / "work" / "ldm_class_vae8_more", 0.25, 9, 90.0)
    for steps, name in enumerate(("ldm_text_vae8", "ldm_text_vae8_more", "ldm_text_vae8_more2"), start=4):
        tiny_text_pipe().save_pretrained(tmp / "work" / name)
        (tmp / "work" / name / "train_summary.json").write_text(json.dumps({"task": "ldm", "global_step": steps,
                                                                            "train_seconds_this_run": 6.0}))
    work, env = _recipe_runs(runs, CLASS_RUN="ldm_class_vae8_more", TEXT_RUN="ldm_text_vae8_more2", CLASS_SCALE="3.25",
                              CLASS_INTERVAL="0 4")
    subprocess.run(["bash", "train/ship_fashion_mnist.sh", "ldm_class", "guided", "ldm_text"], cwd=REPO, env=env,
                   check=True, capture_output=True, text=True)
    want = {k: v.half() for k, v in more.unet.state_dict().items()}
    for name in ("ldm_class", "guided"):
        shipped = UNet.from_pretrained(tmp / "models" / name / "unet", torch_dtype=torch.float16).state_dict()
        assert all(torch.equal(shipped[k], want[k]) for k in want), name
    index = json.loads((tmp / "models" / "ldm_class" / "model_index.json").read_text())
    assert index["default_guidance_scale"] == 3.25 and index["default_guidance_interval"] == [0, 4]
    ldm_card, guided_card, text_card = ((tmp / "models" / n / "README.md").read_text()
                                        for n in ("ldm_class", "guided", "ldm_text"))
    assert "fashion_mnist_recipe.sh vae8 ldm_class ldm_class_more (" in ldm_card
    assert "- ldm (ldm_class_vae8_more): 9 steps" in ldm_card and "- ldm (ldm_class_vae8): 5 steps" in ldm_card
    assert "`CLASS_RUN=ldm_class_vae8_more WORK=runs/fmnist FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh " \
           "vae8 ldm_class ldm_class_more classifier guided" in guided_card
    assert "- ldm (ldm_class_vae8_more): 9 steps" in guided_card
    assert "fashion_mnist_recipe.sh vae8 ldm_text ldm_text_more ldm_text_more2 (" in text_card
    assert str(tmp) not in text_card
    for steps, run in enumerate(("ldm_text_vae8", "ldm_text_vae8_more", "ldm_text_vae8_more2"), start=4):
        assert f"- ldm ({run}): {steps} steps" in text_card, run
    bad = subprocess.run(["bash", "train/ship_fashion_mnist.sh", "ldm_class"], cwd=REPO, capture_output=True,
                         text=True, env=dict(env, CLASS_RUN="ldm_class_vae8_longer", MODELS=str(tmp / "none")))
    assert bad.returncode == 2 and "unknown run ldm_class_vae8_longer" in bad.stderr and not (tmp / "none").exists()


def test_guided_steers_its_own_unconditional_unet_with_guided_unet(runs):
    """GUIDED_UNET=guided_unet_vae8: the recipe's guided stage (UNET_RUN) builds guided on the guided_unet run's
    U-Net, the ship script ships it and its card gives that stage, the run's steps and what the U-Net is; any
    other value is refused before anything ships."""
    import subprocess

    tmp, _vae_run, ldm_run, _ev = runs
    (tmp / "work").mkdir()
    uncond = _continued_ldm_run(ldm_run, tmp / "work" / "guided_unet_vae8", -0.5, 11, 33.0)
    work, env = _recipe_runs(runs, UNET_RUN="guided_unet_vae8", GUIDED_UNET="guided_unet_vae8", GUIDED_SCALE="5",
                             GUIDED_INTERVAL="0 20")
    subprocess.run(["bash", "train/ship_fashion_mnist.sh", "guided"], cwd=REPO, env=env, check=True,
                   capture_output=True, text=True)
    shipped = UNet.from_pretrained(tmp / "models" / "guided" / "unet", torch_dtype=torch.float16).state_dict()
    want = {k: v.half() for k, v in uncond.unet.state_dict().items()}
    assert all(torch.equal(shipped[k], want[k]) for k in want)
    index = json.loads((tmp / "models" / "guided" / "model_index.json").read_text())
    assert index["default_guidance_scale"] == 5 and index["default_guidance_interval"] == [0, 20]
    card = (tmp / "models" / "guided" / "README.md").read_text()
    assert "`UNET_RUN=guided_unet_vae8 WORK=runs/fmnist FIRST_STAGE=vae8 bash train/fashion_mnist_recipe.sh vae8 " \
           "ldm_class guided_unet classifier guided (" in card
    assert "(a shared 2-core CPU, one thread per stage; both threads for guided_unet; the unet is the class U-Net " \
           "continued on the null class alone)" in card
    assert "- ldm (guided_unet_vae8): 11 steps" in card and "- ldm (ldm_class_vae8): 5 steps" in card
    bad = subprocess.run(["bash", "train/ship_fashion_mnist.sh", "guided"], cwd=REPO, capture_output=True, text=True,
                         env=dict(env, GUIDED_UNET="guided_unet_longer", MODELS=str(tmp / "none")))
    assert bad.returncode == 2 and "unknown GUIDED_UNET guided_unet_longer" in bad.stderr
    assert not (tmp / "none").exists()


def test_card_sections_are_written_from_the_quality_jsons(tmp_path):
    """train/card_sections.py: the headline row is the largest N at the folder's default scale (read from the
    JSON, not its name), the sweep the next N; a few-step section only where the scheduler saves steps; a folder
    with no row at its default scale is refused by name; a second run replaces the sections, not appends."""
    spec = importlib.util.spec_from_file_location("_card_sections", REPO / "train" / "card_sections.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = tmp_path / "quality"
    results.mkdir()

    def row(name, scale, n, fd_inf, acc, steps=25, interval=None):
        (results / name).write_text(json.dumps({"guidance_scale": scale, "num_samples": n, "fd_inf": fd_inf,
                                                "class_accuracy": acc, "steps": steps, "guidance_interval": interval}))

    def folder(name, scale, optimized=None, **components):
        f = tmp_path / "models" / name
        (f / "scheduler").mkdir(parents=True, exist_ok=True)
        (f / "model_index.json").write_text(json.dumps({"default_guidance_scale": scale, **components}))
        (f / "scheduler" / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "SDEScheduler", "solver": "multistep", "time_grid": "uniform", "denoise_final": False,
             "optimized_timesteps": optimized}))
        (f / "README.md").write_text(f"# {name}\n\n## Usage\n\nx\n")
        return f

    row("ldm_class_sdeuniform25_w3_n10k.json", 3.0, 10000, 1.44, 0.981)
    row("ldm_class_sdeuniform25_w3.25_n10k.json", 3.25, 10000, 1.52, 0.984)
    row("ldm_class_sdeuniform25_w2.json", 2.0, 2000, 1.9, 0.93)
    row("ldm_class_sdeuniform25_w3.json", 3.0, 2000, 1.5, 0.97)
    row("ldm_class_sdeuniform25_w4.json", 4.0, 2000, 2.0, 0.985)
    row("ldm_class_ddim25_w3.json", 3.0, 2000, 1.7, 0.975)
    row("ldm_class_opt5_w3.json", 3.0, 2000, 1.8, 0.97, steps=5)
    row("guided_sdeuniform25_s8_typo_named_s6.json", 8.0, 1000, 4.5, 0.93)
    row("guided_sdeuniform25_s6.json", 6.0, 500, 4.2, 0.9)
    ldm = folder("ldm_class", 3.0, {"5": [999, 700, 500, 300, 100]})
    guided = folder("guided", 8.0, classifier=["hf_ddm.models.classifier", "NoisyClassifier"])
    mod.main([str(ldm), str(guided), "--results", str(results), "--note", "guided=Its U-Net is ldm_class's."])
    mod.main([str(ldm), str(guided), "--results", str(results), "--note", "guided=Its U-Net is ldm_class's."])
    card = (ldm / "README.md").read_text()
    assert card.count("## Recommended sampler") == 1 and card.count("## Few-step schedules") == 1
    assert ("DPM-Solver++(2M) on this model's own schedule, steps uniform in train time, no final denoising call, "
            "with `default_guidance_scale` 3: FD∞ 1.44 and class accuracy 0.981 at 25 steps, N = 10,000 "
            "(`ldm_class_sdeuniform25_w3_n10k.json`)") in card
    assert "At N = 2,000, w = 2 / 3 / 4 give FD∞ 1.90 / 1.50 / 2.00 and class accuracy 0.930 / 0.970 / 0.985." in card
    assert "DDIM (`VPScheduler`, 25 steps) at w = 3: FD∞ 1.70" in card
    assert "- 5 steps: 999, 700, 500, 300, 100" in card and "FD∞ 1.80 at 5 steps (N = 2,000, w = 3)" in card
    assert "python -m hf_ddm.few_step space/models/ldm_class --nfe 5" in card and str(tmp_path) not in card
    row("ldm_class_opt5_w3.json", 3.0, 2000, 1.8, 0.97, steps=5, interval=[0, 4])  # calibrated and run in an interval
    mod.main([str(ldm), "--results", str(results)])
    assert "FD∞ 1.80 at 5 steps (N = 2,000, w = 3 at σ ≤ 4)" in (ldm / "README.md").read_text()
    gcard = (guided / "README.md").read_text()
    assert "`default_guidance_scale` 8: FD∞ 4.50" in gcard and "Few-step" not in gcard
    assert "At N = 500, s = 6 give FD∞ 4.20 and class accuracy 0.900." in gcard  # a classifier's scale is s
    assert gcard.count("Its U-Net is ldm_class's.") == 1
    text = folder("ldm_text", 5.0, text_encoder=["transformers", "CLIPTextModel"])
    row("ldm_text_sdeuniform25_w4_n1000.json", 4.0, 1000, 2.6, 0.96)
    with pytest.raises(SystemExit, match="ldm_text: no ldm_text_sdeuniform25_\\* row at its default_guidance_scale 5"):
        mod.main([str(text), "--results", str(results)])
    row("ldm_text_sdeuniform25_w5_n10k.json", 5.0, 10000, 3.1, 0.97)
    mod.main([str(text), "--results", str(results)])
    assert "FD∞ 3.10 and prompt accuracy 0.970" in (text / "README.md").read_text()  # a text model: its prompts

    # A folder guiding in an interval: its headline is the row at its scale *and* interval, every level beside it.
    ldm = folder("ldm_class", 4.0, default_guidance_interval=[0, 5])
    with pytest.raises(SystemExit, match="default_guidance_scale 4 guiding only at σ ≤ 5"):
        mod.main([str(ldm), "--results", str(results)])
    row("ldm_class_sdeuniform25_w4_gi0-5_n10k.json", 4.0, 10000, 1.35, 0.983, interval=[0, 5])
    row("ldm_class_sdeuniform25_w4_n10k.json", 4.0, 10000, 2.4, 0.988, interval=[0, None])
    row("ldm_class_sdeuniform25_w3_gi0-5.json", 3.0, 2000, 1.0, 0.972, interval=[0, 5])
    row("ldm_class_sdeuniform25_w4_gi0-5.json", 4.0, 2000, 1.3, 0.981, interval=[0, 5])
    mod.main([str(ldm), "--results", str(results)])
    card = (ldm / "README.md").read_text()
    assert ("with `default_guidance_scale` 4 applied only at noise levels σ ≤ 5 (`default_guidance_interval`; "
            "scale 1, the plain conditional model, elsewhere): FD∞ 1.35 and class accuracy 0.983 at 25 steps, N = "
            "10,000 (`ldm_class_sdeuniform25_w4_gi0-5_n10k.json`). Guided at every level instead: FD∞ 2.40") in card
    assert "At N = 2,000, w = 3 / 4 guiding only at σ ≤ 5 give FD∞ 1.00 / 1.30" in card
    assert "At N = 2,000, w = 2 / 3 / 4 at every level give FD∞ 1.90 / 1.50 / 2.00" in card
