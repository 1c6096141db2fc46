"""The plug-in matrix: each hf_ddm scheduler in each pipeline a diffusers user has -- stock DDPMPipeline,
DDIMPipeline, a tiny StableDiffusionPipeline built from configs offline, and every hf_ddm pipeline --
gives finite images or a clear error, never NaN and never silent garbage."""

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

from hf_ddm.models import VAE, NoisyClassifier, UNet
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline, PixelDiffusionPipeline
from hf_ddm.schedulers import SDEScheduler, VEScheduler, VPScheduler
from hf_ddm.text import build_text_encoder, build_tokenizer

STEPS = 4

# name -> how a user puts that scheduler on a pipeline whose own scheduler is a diffusers VP one
SCHEDULERS = {
    "vp-ddpm": lambda cfg: VPScheduler.from_config(cfg, sampler="ddpm"),
    "vp-ddim": lambda cfg: VPScheduler.from_config(cfg, sampler="ddim"),
    "ve": lambda cfg: VEScheduler.from_config(cfg),
    "ve-native": lambda cfg: VEScheduler(num_train_timesteps=100, sigma_max=50.0),
    **{f"sde-{solver}": (lambda solver: lambda cfg: SDEScheduler.from_config(cfg, solver=solver))(solver)
       for solver in ("multistep", "ode_heun", "pc", "euler_maruyama", "ancestral")},
}


def tiny_pixel_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


def tiny_hf_unet(channels=3, **kw):
    torch.manual_seed(0)
    return UNet(sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                layers_per_block=1, attention_levels=(), norm_num_groups=4, attention_head_dim=8, **kw)


def tiny_sd():
    torch.manual_seed(0)
    tok = build_tokenizer(["a photo of a cat", "a dog"], max_length=8)
    enc = build_text_encoder(tok, hidden_size=16, layers=1, heads=2)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def run_ddpm(scheduler_for):
    pipe = DDPMPipeline(unet=tiny_pixel_unet(), scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.scheduler = scheduler_for(pipe.scheduler.config)
    return pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np").images


def run_ddim(scheduler_for):
    pipe = DDIMPipeline(unet=tiny_pixel_unet(), scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.scheduler = scheduler_for(pipe.scheduler.config)  # DDIMPipeline.__init__ converts: assign after
    return pipe(batch_size=2, num_inference_steps=STEPS, eta=0.0, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def run_sd(scheduler_for):
    pipe = tiny_sd()
    pipe.scheduler = scheduler_for(pipe.scheduler.config)
    return pipe("a photo of a cat", height=16, width=16, num_inference_steps=STEPS, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def run_pixel(scheduler_for):
    pipe = PixelDiffusionPipeline(tiny_hf_unet(), DDPMScheduler(num_train_timesteps=100))
    pipe.scheduler = scheduler_for(pipe.scheduler.config)
    return pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np").images


def run_latent(scheduler_for):
    torch.manual_seed(0)
    vae = VAE(in_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    pipe = LatentDiffusionPipeline(unet=tiny_hf_unet(4, num_class_embeds=3), vae=vae,
                                   scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"))
    pipe.scheduler = scheduler_for(pipe.scheduler.config)
    return pipe(class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def run_guided(scheduler_for):
    torch.manual_seed(0)
    clf = NoisyClassifier(sample_size=8, in_channels=3, num_classes=3, block_out_channels=(8, 16), layers_per_block=1,
                          attention_levels=(), norm_num_groups=4, attention_head_dim=8)
    pipe = ClassifierGuidedPipeline(unet=tiny_hf_unet(), classifier=clf, scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.scheduler = scheduler_for(pipe.scheduler.config)
    return pipe(class_labels=[0, 1], guidance_scale=2.0, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="np").images


PIPELINES = {"DDPMPipeline": run_ddpm, "DDIMPipeline": run_ddim, "StableDiffusionPipeline": run_sd,
             "PixelDiffusionPipeline": run_pixel, "LatentDiffusionPipeline": run_latent,
             "ClassifierGuidedPipeline": run_guided}

# The cells that must be refused, and the words of the refusal.
REFUSED = {
    # A VP model's outputs mean nothing on the VE process.
    **{("ve", p): "VP" for p in PIPELINES},
    # Stock DDPMPipeline never scales its starting noise by init_noise_sigma.
    ("ve-native", "DDPMPipeline"): "init_noise_sigma",
}


# "ve-native" (a VE scheduler of its own, not converted from the model's config) is only a cell for the
# pipeline that ignores init_noise_sigma; elsewhere it is the "ve" row's VP-model mismatch again.
CELLS = [(s, p) for s in SCHEDULERS for p in PIPELINES if s != "ve-native" or p == "DDPMPipeline"]


@pytest.mark.parametrize("scheduler, pipeline", CELLS)
def test_plugin_matrix(scheduler, pipeline):
    expected_error = REFUSED.get((scheduler, pipeline))
    if expected_error:
        with pytest.raises(ValueError, match=expected_error):
            PIPELINES[pipeline](SCHEDULERS[scheduler])
        return
    images = PIPELINES[pipeline](SCHEDULERS[scheduler])
    assert images.shape[0] >= 1 and images.ndim == 4
    assert torch.isfinite(torch.as_tensor(images)).all()


def test_stock_ddim_pipeline_eta_reaches_the_ddim_solver():
    """DDIMPipeline's eta means DDIM's eta in SDEScheduler(solver='ode_euler') and is refused elsewhere."""
    base = DDIMScheduler(num_train_timesteps=100).config

    def run(sched, eta):
        pipe = DDIMPipeline(unet=tiny_pixel_unet(), scheduler=DDIMScheduler(num_train_timesteps=100))
        pipe.scheduler = sched
        return pipe(batch_size=2, num_inference_steps=STEPS, eta=eta, generator=torch.Generator().manual_seed(0),
                    output_type="np").images

    ode = SDEScheduler.from_config(base, solver="ode_euler")
    assert not (run(ode, 0.0) == run(ode, 1.0)).all()  # eta = 1 adds DDPM's posterior noise
    with pytest.raises(ValueError, match="eta"):
        run(SDEScheduler.from_config(base, solver="multistep"), 1.0)
    with pytest.raises(ValueError, match="eta"):
        run(VEScheduler(num_train_timesteps=100), 0.5)
