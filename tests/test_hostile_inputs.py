"""Hostile and careless inputs to the public entry points: each gets a ValueError that names the bad
argument (never a ZeroDivisionError / IndexError from inside, never a silent substitution, never NaN
from finite input). Training-argument cases live in test_train_common.py (test_bad_training_args)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

import hf_ddm.limits
from hf_ddm import optimize_steps
from hf_ddm.likelihood import ddpm_bound, ode_log_likelihood
from hf_ddm.models import VAE, NoisyClassifier, UNet
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline, PixelDiffusionPipeline
from hf_ddm.schedulers import SDEScheduler, VEScheduler, VPScheduler

TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
            attention_levels=(), mid_block_attention=False, norm_num_groups=4)


def unet(**kw):
    torch.manual_seed(0)
    return UNet(**{**TINY, **kw})


def classifier(**kw):
    cfg = dict(num_classes=3, sample_size=8, in_channels=1, block_out_channels=(8, 8), layers_per_block=1,
               attention_levels=(), mid_block_attention=False, norm_num_groups=4)
    torch.manual_seed(0)
    return NoisyClassifier(**{**cfg, **kw})


def vae(**kw):
    cfg = dict(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4)
    return VAE(**{**cfg, **kw})


def guided_pipe():
    pipe = ClassifierGuidedPipeline(unet=unet(), classifier=classifier(), scheduler=VPScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_pipe():
    pipe = PixelDiffusionPipeline(unet(num_class_embeds=3), VPScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_pipe():
    from hf_ddm.text import build_text_encoder, build_tokenizer

    tok = build_tokenizer(["a cat", "a dog"], max_length=8)
    torch.manual_seed(0)
    enc = build_text_encoder(tok, hidden_size=8, layers=1, heads=2)
    pipe = LatentDiffusionPipeline(unet=unet(in_channels=2, out_channels=2, **CROSS), vae=vae(),
                                   scheduler=VPScheduler(num_train_timesteps=20), text_encoder=enc, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CROSS = dict(attention_levels=(1,), attention_head_dim=4, cross_attention_dim=8)  # a U-Net with cross-attention
X = torch.randn(2, 1, 8, 8)
DATA = torch.rand(2, 1, 4, 4) * 2 - 1


def zero_model(x, t):
    return torch.zeros_like(x)


CASES = {
    # --- model constructors: sizes checked before any allocation ---
    "unet norm_num_groups=0": (lambda: unet(norm_num_groups=0), "norm_num_groups"),
    "unet in_channels=0": (lambda: unet(in_channels=0), "in_channels"),
    "unet out_channels=-1": (lambda: unet(out_channels=-1), "out_channels"),
    "unet in_channels=True": (lambda: unet(in_channels=True), "in_channels"),
    "unet attention_head_dim=0": (lambda: unet(attention_levels=(0,), attention_head_dim=0), "attention_head_dim"),
    "unet sample_size=40000": (lambda: unet(sample_size=40000), "sample_size.*MAX_SAMPLE_SIZE"),
    "unet sample_size=0": (lambda: unet(sample_size=0), "sample_size"),
    "unet channels 1e9": (lambda: unet(block_out_channels=(10**9,)), "block_out_channels.*MAX_CHANNELS"),
    "unet num_class_embeds=0": (lambda: unet(num_class_embeds=0), "num_class_embeds"),
    "unet cross_attention_dim=0": (lambda: unet(attention_levels=(1,), attention_head_dim=4,
                                                cross_attention_dim=0), "cross_attention_dim"),
    "classifier norm_num_groups=0": (lambda: classifier(norm_num_groups=0), "norm_num_groups"),
    "classifier num_classes=1": (lambda: classifier(num_classes=1), "num_classes"),
    "classifier sample_size=(8, 0)": (lambda: classifier(sample_size=(8, 0)), "sample_size"),
    "vae latent_channels=0": (lambda: vae(latent_channels=0), "latent_channels"),
    "vae in_channels=10**9": (lambda: vae(in_channels=10**9), "in_channels.*MAX_CHANNELS"),
    "vae norm_num_groups=0": (lambda: vae(norm_num_groups=0), "norm_num_groups"),
    "vae scaling_factor nan": (lambda: vae(scaling_factor=math.nan), "scaling_factor"),
    "unet timestep_scale nan": (lambda: unet(timestep_scale=math.nan), "timestep_scale"),
    "unet norm_eps -1": (lambda: unet(norm_eps=-1.0), "norm_eps"),
    "classifier timestep_scale 0": (lambda: classifier(timestep_scale=0.0), "timestep_scale"),
    "unet layers_per_block 1.5": (lambda: unet(layers_per_block=1.5), "layers_per_block"),
    # --- class labels: no IndexError from nn.Embedding, no silent truncation of floats ---
    "unet class label past the null class": (
        lambda: unet(num_class_embeds=3)(X, 5, class_labels=torch.tensor([4, 0])), r"class_labels.*\[0, 3\]"),
    "unet class label -1": (lambda: unet(num_class_embeds=3)(X, 5, class_labels=torch.tensor([-1, 0])),
                            "class_labels"),
    "unet float class label": (lambda: unet(num_class_embeds=3)(X, 5, class_labels=torch.tensor([1.5, 0.0])),
                               "class_labels.*integer"),
    "unet bool class label": (lambda: unet(num_class_embeds=3)(X, 5, class_labels=torch.tensor([True, False])),
                              "class_labels"),
    "classifier grad label 3 of 3": (lambda: classifier().grad_log_prob(X, 5, torch.tensor([3, 0])),
                                     r"class_labels.*\[0, 2\]"),
    "pipeline float class label": (lambda: class_pipe()(class_labels=[1.5], num_inference_steps=2), "class_labels"),
    "pipeline class label 3 of 3": (lambda: class_pipe()(class_labels=[3], num_inference_steps=2), "class_labels"),
    # --- pipelines ---
    "guided batch_size=0": (lambda: guided_pipe()(class_labels=1, batch_size=0, num_inference_steps=2), "batch_size"),
    "guided batch_size=True": (lambda: guided_pipe()(class_labels=1, batch_size=True, num_inference_steps=2),
                               "batch_size"),
    "pipeline batch_size 10**6": (lambda: class_pipe()(batch_size=10**6, num_inference_steps=2),
                                  "batch_size.*MAX_BATCH_SIZE"),
    "pipeline num_inference_steps=2.0": (lambda: class_pipe()(num_inference_steps=2.0), "num_inference_steps"),
    "pipeline NaN latents": (lambda: class_pipe()(num_inference_steps=2, latents=torch.full((1, 1, 8, 8), math.nan)),
                             "latents.*finite"),
    # --- schedulers: parameters where the arithmetic fails are refused with the range ---
    "VP trained_betas NaN": (lambda: VPScheduler(trained_betas=[math.nan] * 1000), "betas.*NaN"),
    "VP trained_betas 1.0": (lambda: VPScheduler(trained_betas=[1.0] * 1000), "alphas_cumprod.*reaches 0"),
    "VP beta_end 0.999 underflows": (lambda: VPScheduler(beta_end=0.999), "alphas_cumprod.*reaches 0"),
    "SDE trained_betas 1.0": (lambda: SDEScheduler(trained_betas=[1.0] * 1000), "alphas_cumprod.*reaches 0"),
    "SDE beta_max 1000": (lambda: SDEScheduler(beta_max=1000.0), "beta_min \\+ beta_max <= 174"),
    "SDE beta_max 1e6": (lambda: SDEScheduler(beta_max=1e6), "beta_max"),
    "SDE sub-vp beta_max 1000": (lambda: SDEScheduler(sde="sub-vp", beta_max=1000.0), "beta_max"),
    "SDE beta_min nan": (lambda: SDEScheduler(beta_min=math.nan), "beta_min"),
    "VE sigma_max 1e30": (lambda: VEScheduler(sigma_max=1e30), r"sigma_max.*\[1e-18, 1e\+18\]"),
    "SDE VE sigma_max 1e30": (lambda: SDEScheduler(sde="ve", sigma_max=1e30), "sigma_max"),
    "SDE VE sigma_min 1e-30": (lambda: SDEScheduler(sde="ve", sigma_min=1e-30), "sigma_min"),
    "SDE pc snr nan": (lambda: SDEScheduler(solver="pc", snr=math.nan), "snr"),
    "SDE pc correct_steps 10**6": (lambda: SDEScheduler(solver="pc", correct_steps=10**6), "correct_steps"),
    "SDE rho inf": (lambda: SDEScheduler(rho=math.inf), "rho"),
    "SDE num_train_timesteps 0": (lambda: SDEScheduler(num_train_timesteps=0), "num_train_timesteps"),
    "SDE log_snr_min above the data end": (lambda: SDEScheduler(log_snr_min=100.0), "log_snr_min"),
    "SDE set_timesteps 10**7": (lambda: SDEScheduler().set_timesteps(10**7), "num_inference_steps.*MAX_INFERENCE"),
    "VP set_timesteps True": (lambda: VPScheduler().set_timesteps(True), "num_inference_steps"),
    "VP ddpm sampler eta=1 (would be ignored)": (lambda: VPScheduler(sampler="ddpm", eta=1.0), "eta"),
    # --- issue 24's list: silently accepted or obscure before ---
    "SDE snr=0": (lambda: SDEScheduler(snr=0), "snr"),
    "SDE corrector_snr=-1": (lambda: SDEScheduler(corrector_snr=-1), "corrector_snr"),
    "SDE pc correct_steps=0": (lambda: SDEScheduler(solver="pc", correct_steps=0), "correct_steps.*reverse_diffusion"),
    "VAE loss decoder_std=-1": (lambda: vae().loss(DATA[:, :, :4, :4].repeat(1, 1, 2, 2), decoder_std=-1), "decoder_std"),
    "VAE loss decoder_std=0": (lambda: vae().loss(DATA[:, :, :4, :4].repeat(1, 1, 2, 2), decoder_std=0), "decoder_std"),
    "VP num_train_timesteps=2.5": (lambda: VPScheduler(num_train_timesteps=2.5), "num_train_timesteps"),
    "VP beta_start='abc'": (lambda: VPScheduler(beta_start="abc"), "beta_start"),
    "SDE beta_end='abc'": (lambda: SDEScheduler(beta_schedule="linear", beta_end="abc"), "beta_end"),
    "VP step at NaN": (lambda: _stepped(VPScheduler(), math.nan), "timestep.*finite"),
    "SDE step at NaN": (lambda: _stepped(SDEScheduler(), math.nan), "timestep.*finite"),
    "VE step at NaN": (lambda: _stepped(VEScheduler(), math.nan), "timestep.*finite"),
    "VP add_noise timesteps of another batch": (lambda: VPScheduler().add_noise(X, X, torch.tensor([1, 2, 3])),
                                                "timesteps.*one per sample"),
    "SDE add_noise timesteps of another batch": (lambda: SDEScheduler().add_noise(X, X, torch.tensor([1.0, 2.0, 3.0])),
                                                 "timesteps.*one per sample"),
    "unet wrong channels": (lambda: unet()(torch.randn(2, 3, 8, 8), 5), "sample.*in_channels=1"),
    "unet wrong rank": (lambda: unet()(torch.randn(2, 8, 8), 5), "sample.*4-D"),
    "vae wrong channels": (lambda: vae().encode(torch.randn(2, 3, 8, 8)), "x.*in_channels=1"),
    "classifier wrong channels": (lambda: classifier()(torch.randn(2, 2, 8, 8), 5), "sample.*in_channels=1"),
    "unet encoder_hidden_states of another width": (
        lambda: unet(**CROSS)(X, 5, encoder_hidden_states=torch.randn(2, 3, 6)),
        r"encoder_hidden_states.*cross_attention_dim=8.*\(2, 3, 6\)"),
    "unet encoder_hidden_states of rank 2": (lambda: unet(**CROSS)(X, 5, encoder_hidden_states=torch.randn(2, 8)),
                                             r"encoder_hidden_states.*\(batch, tokens"),
    "unet encoder_hidden_states of another batch": (
        lambda: unet(**CROSS)(X, 5, encoder_hidden_states=torch.randn(3, 4, 8)), "encoder_hidden_states.*batch of 3"),
    "unet encoder_attention_mask of other tokens": (
        lambda: unet(**CROSS)(X, 5, encoder_hidden_states=torch.randn(2, 4, 8),
                              encoder_attention_mask=torch.ones(2, 5)), "encoder_attention_mask"),
    "unet class_labels of another batch": (
        lambda: unet(num_class_embeds=3)(X, 5, class_labels=torch.tensor([0, 1, 2])), "class_labels.*batch of 3"),
    "text pipeline prompt=[]": (lambda: text_pipe()(prompt=[], num_inference_steps=2), "prompt.*empty"),
    "pipeline class_labels=[]": (lambda: class_pipe()(class_labels=[], num_inference_steps=2), "class_labels"),
    "guided class_labels=None": (lambda: guided_pipe()(class_labels=None, num_inference_steps=2), "class_labels"),
    "pipeline guidance_scale='abc'": (lambda: class_pipe()(class_labels=[1], num_inference_steps=2,
                                                           guidance_scale="abc"), "guidance_scale"),
    "VP zero-SNR trailing with an epsilon model": (
        lambda: VPScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing").set_timesteps(4),
        "epsilon.*zero-terminal-SNR.*v_prediction"),
    # --- likelihoods ---
    "ode_log_likelihood t_start=0": (lambda: ode_log_likelihood(zero_model, SDEScheduler(), DATA, t_start=0),
                                     "t_start"),
    "ode_log_likelihood t_start=-1": (lambda: ode_log_likelihood(zero_model, SDEScheduler(), DATA, t_start=-1),
                                      "t_start"),
    "ode_log_likelihood t_start=nan": (lambda: ode_log_likelihood(zero_model, SDEScheduler(), DATA,
                                                                  t_start=math.nan), "t_start"),
    "ode_log_likelihood t_start=2": (lambda: ode_log_likelihood(zero_model, SDEScheduler(), DATA, t_start=2.0),
                                     "t_start"),
    "ode_log_likelihood num_probes=0": (lambda: ode_log_likelihood(zero_model, SDEScheduler(), DATA, num_probes=0),
                                        "num_probes"),
    "ddpm_bound data far outside [-1, 1]": (lambda: ddpm_bound(zero_model, DDPMScheduler(), DATA * 50),
                                            "convention"),
}


def _stepped(sched, timestep):
    sched.set_timesteps(3)
    return sched.step(X, timestep, X)


# Inputs of the wrong type: a TypeError naming the argument.
TYPE_CASES = {
    "pipeline generator='abc'": (lambda: class_pipe()(num_inference_steps=2, generator="abc"), "generator"),
    "scheduler step generator='abc'": (lambda: _stepped_with(SDEScheduler(solver="euler_maruyama"), generator="abc"),
                                       "generator"),
    "pipeline class_labels={}": (lambda: class_pipe()(class_labels={}, num_inference_steps=2), "class_labels"),
    "pipeline class_labels=[1, None]": (lambda: class_pipe()(class_labels=[1, None], num_inference_steps=2),
                                        "class_labels"),
    "text pipeline prompt=5": (lambda: text_pipe()(prompt=5, num_inference_steps=2), "prompt.*string"),
    "text pipeline prompt=['cat', None]": (lambda: text_pipe()(prompt=["cat", None], num_inference_steps=2),
                                           "prompt.*string.*None"),
    "text pipeline negative_prompt=[None]": (
        lambda: text_pipe()(prompt="a cat", negative_prompt=[None], num_inference_steps=2), "negative_prompt"),
    "unet encoder_hidden_states a list": (lambda: unet(**CROSS)(X, 5, encoder_hidden_states=[[0.0] * 8]),
                                          "encoder_hidden_states.*torch.Tensor"),
    "VP step positional past DDPM's": (lambda: _stepped_with(VPScheduler(), None, True, 0.0), "at most 5"),
    "optimize_steps decode='images'": (lambda: optimize_steps(zero_model, SDEScheduler(), 3, sample_shape=(2, 2),
                                                              decode="images"), "decode"),
}


def _stepped_with(sched, *args, **kwargs):
    sched.set_timesteps(3)
    return sched.step(X, sched.timesteps[0], X, *args, **kwargs)


@pytest.mark.parametrize("case", list(TYPE_CASES), ids=list(TYPE_CASES))
def test_input_of_the_wrong_type_is_refused_by_name(case):
    call, pattern = TYPE_CASES[case]
    with pytest.raises(TypeError, match=pattern):
        call()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_input_is_refused_by_name(case):
    call, pattern = CASES[case]
    with pytest.raises(ValueError, match=pattern):
        call()


def test_limits_can_be_raised(monkeypatch):
    with pytest.raises(ValueError, match="MAX_SAMPLE_SIZE"):
        unet(sample_size=8192)
    monkeypatch.setattr(hf_ddm.limits, "MAX_SAMPLE_SIZE", 8192)
    assert unet(sample_size=8192).config.sample_size == 8192


def test_valid_edge_values_still_work():
    # The null class is a valid label of a class-conditional U-Net; integral float labels are ids.
    m = unet(num_class_embeds=3)
    assert torch.isfinite(m(X, 5, class_labels=torch.tensor([3, 3])).sample).all()
    torch.testing.assert_close(m(X, 5, class_labels=torch.tensor([2.0, 0.0])).sample,
                               m(X, 5, class_labels=torch.tensor([2, 0])).sample)
    # One label / one token sequence for the whole batch broadcasts; a text pipeline takes a tuple of prompts.
    torch.testing.assert_close(m(X, 5, class_labels=torch.tensor([1])).sample,
                               m(X, 5, class_labels=torch.tensor([1, 1])).sample)
    ctx = torch.randn(1, 4, 8)
    torch.testing.assert_close(unet(**CROSS)(X, 5, encoder_hidden_states=ctx).sample,
                               unet(**CROSS)(X, 5, encoder_hidden_states=ctx.expand(2, 4, 8)).sample)
    assert text_pipe()(prompt=("a cat", "a dog"), num_inference_steps=2, output_type="latent").images.shape[0] == 2
    # A zero-terminal-SNR schedule may end at alphas_cumprod = 0; the widest allowed ranges construct.
    VPScheduler(rescale_betas_zero_snr=True)
    SDEScheduler(beta_max=170.0)
    SDEScheduler(sde="ve", sigma_min=1e-18, sigma_max=1e18)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_start_noise_a_dtype_cannot_hold_is_refused(dtype):
    sched = SDEScheduler(sde="ve", sigma_max=1e10)
    sched.set_timesteps(3)
    x = torch.randn(2, 1, 4, 4).to(dtype) * sched.init_noise_sigma
    if torch.finfo(dtype).max > 8e10:  # bfloat16 holds 1e10: it samples, and finitely
        out = sched.step(torch.zeros_like(x), sched.timesteps[0], x).prev_sample
        assert torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match="float16 cannot hold"):
            sched.step(torch.zeros_like(x), sched.timesteps[0], x)


def test_langevin_corrector_with_zero_model_output_is_finite():
    sched = SDEScheduler(sde="ve", solver="pc")
    sched.set_timesteps(4)
    x = torch.randn(2, 1, 4, 4) * sched.init_noise_sigma
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x, generator=g).prev_sample
        assert torch.isfinite(x).all()
