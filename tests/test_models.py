"""Tests of hf_ddm.models: UNet, VAE, NoisyClassifier (tiny configs, CPU, seconds)."""

import inspect
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMPipeline, DDPMScheduler
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from hf_ddm.models import VAE, NoisyClassifier, NoisyClassifierOutput, UNet, UNetOutput
from hf_ddm.models.layers import timestep_embedding

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU the OpenMP barriers of
    thousands of tiny ops cost seconds. Restored afterwards so other test modules are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(**kw):
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
               attention_levels=(1,), norm_num_groups=8, attention_head_dim=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return UNet(**cfg)


def tiny_vae(**kw):
    cfg = dict(in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(16, 32), layers_per_block=1,
               norm_num_groups=8, sample_size=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return VAE(**cfg)


def tiny_classifier(**kw):
    cfg = dict(num_classes=3, sample_size=8, in_channels=3, block_out_channels=(16, 32), layers_per_block=1,
               attention_levels=(1,), norm_num_groups=8, attention_head_dim=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return NoisyClassifier(**cfg)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- shapes, configs, input forms -------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    dict(),
    dict(block_out_channels=(8, 16, 32), layers_per_block=2, attention_levels=(0, 2), norm_num_groups=4),
    dict(in_channels=1, out_channels=2, mid_block_attention=False, attention_levels=(), dropout=0.1),
    dict(block_out_channels=(16,), attention_levels=(0,)),
])
@pytest.mark.parametrize("hw", [(8, 8), (16, 24)])
def test_unet_shapes(cfg, hw):
    unet = tiny_unet(**cfg).eval()
    x = randn(2, unet.config.in_channels, *hw)
    out = unet(x, 10)
    assert isinstance(out, UNetOutput)
    assert out.sample.shape == (2, unet.config.out_channels, *hw) and out.sample.dtype == torch.float32
    assert out.sample.is_contiguous()  # NCHW back out even though CPU runs channels-last inside
    (tup,) = unet(x, 10, return_dict=False)
    torch.testing.assert_close(tup, out.sample)


def test_indivisible_sizes_raise_naming_the_constraint():
    unet = tiny_unet(block_out_channels=(8, 16, 32), norm_num_groups=4)  # downsamples twice: needs /4
    unet(randn(1, 3, 12, 20), 1)  # multiples of 4 that are not powers of two are fine
    for hw in [(10, 12), (12, 7)]:
        with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(block_out_channels\) - 1\) = 4"):
            unet(randn(1, 3, *hw), 1)
    with pytest.raises(ValueError, match="divisible by"):
        tiny_classifier()(randn(1, 3, 7, 8), 1)
    with pytest.raises(ValueError, match="divisible by"):
        tiny_vae().encode(randn(1, 3, 9, 8))
    with pytest.raises(ValueError, match="4-D"):
        unet(randn(3, 8, 8), 1)


def test_timestep_forms_agree():
    unet = tiny_unet().eval()
    x = randn(3, 3, 8, 8)
    ref = unet(x, torch.tensor([7, 7, 7])).sample
    for t in (7, 7.0, torch.tensor(7), torch.tensor([7.0]), torch.tensor(7, dtype=torch.int32)):
        torch.testing.assert_close(unet(x, t).sample, ref)
    # continuous timesteps are honoured (not truncated to ints)
    assert not torch.allclose(unet(x, 7.5).sample, ref)
    per_sample = unet(x, torch.tensor([1, 7, 500])).sample
    torch.testing.assert_close(per_sample[1], ref[1])
    with pytest.raises(ValueError, match="timestep"):
        unet(x, torch.tensor([1, 2]))


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 0.25])
    for dim in (32, 33):
        ours = timestep_embedding(t, dim, flip_sin_to_cos=True, freq_shift=0)
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(timestep_embedding(t, 16, flip_sin_to_cos=False, freq_shift=1),
                               get_timestep_embedding(t, 16, flip_sin_to_cos=False, downscale_freq_shift=1))


@pytest.mark.parametrize("bad, match", [
    (dict(block_out_channels=(16, 30)), "norm_num_groups"),
    (dict(attention_levels=(2,)), "attention_levels"),
    (dict(attention_levels=(-1,)), "attention_levels"),
    (dict(attention_head_dim=12), "attention_head_dim"),
    (dict(layers_per_block=0), "layers_per_block"),
    (dict(block_out_channels=()), "block_out_channels"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_class_embeds=0), "num_class_embeds"),
    (dict(cross_attention_dim=8, attention_levels=(), mid_block_attention=False), "cross_attention_dim"),
])
def test_unet_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_unet(**bad)


def test_vae_and_classifier_config_validation():
    with pytest.raises(ValueError, match="norm_num_groups"):
        tiny_vae(block_out_channels=(16, 20))
    with pytest.raises(ValueError, match="latent_channels"):
        tiny_vae(latent_channels=0)
    with pytest.raises(ValueError, match="attention_levels"):
        tiny_classifier(attention_levels=(5,))
    with pytest.raises(ValueError, match="num_classes"):
        tiny_classifier(num_classes=1)


# --- conditioning --------------------------------------------------------------------------------


def test_class_conditioning_and_null_class():
    unet = tiny_unet(num_class_embeds=4).eval()
    assert unet.class_embedding.num_embeddings == 5  # + the null class
    x = randn(2, 3, 8, 8)
    null = torch.tensor([4, 4])
    torch.testing.assert_close(unet(x, 3).sample, unet(x, 3, class_labels=null).sample)
    a = unet(x, 3, class_labels=torch.tensor([0, 1])).sample
    b = unet(x, 3, class_labels=torch.tensor([2, 1])).sample
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="num_class_embeds"):
        tiny_unet()(x, 3, class_labels=torch.tensor([0, 1]))


def test_cross_attention_shapes_and_mask():
    unet = tiny_unet(cross_attention_dim=12, attention_levels=(0, 1)).eval()
    x, ctx = randn(2, 3, 8, 8), randn(2, 5, 12, seed=1)
    out = unet(x, 3, encoder_hidden_states=ctx).sample
    assert out.shape == x.shape
    assert not torch.allclose(out, unet(x, 3, encoder_hidden_states=randn(2, 5, 12, seed=2)).sample)
    # Masked tokens are invisible: masking the last two == dropping them.
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    masked = unet(x, 3, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
    torch.testing.assert_close(masked, unet(x, 3, encoder_hidden_states=ctx[:, :3]).sample)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        unet(x, 3)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        tiny_unet()(x, 3, encoder_hidden_states=ctx)


# --- saving and loading --------------------------------------------------------------------------


def _inputs(model):
    x = randn(2, 3, 8, 8)
    if isinstance(model, VAE):
        return lambda m: m(x).sample
    if isinstance(model, NoisyClassifier):
        return lambda m: m(x, 5).logits
    return lambda m: m(x, 5).sample


@pytest.mark.parametrize("make", [tiny_unet, tiny_vae, tiny_classifier], ids=["unet", "vae", "classifier"])
def test_save_load_identical(make, tmp_path):
    model = make().eval()
    run = _inputs(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS).exists() and not (tmp_path / "diffusion_pytorch_model.bin").exists()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == type(model).__name__
    loaded = type(model).from_pretrained(tmp_path).eval()
    public = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in c.items() if not k.startswith("_")}  # noqa
    assert public(loaded.config) == public(model.config)
    torch.testing.assert_close(run(loaded), run(model), rtol=0, atol=0)


def _saved(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_fail_clearly(damage, tmp_path):
    _saved(tmp_path)
    f = tmp_path / WEIGHTS
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(256), "empty": b""}[damage])
    with pytest.raises(OSError, match="not a valid safetensors file"):
        UNet.from_pretrained(tmp_path)


class _Bomb:
    """Unpickling this raises: proves a pickle was (or was not) read."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise AssertionError("a pickle was unpickled")


def test_pickle_is_never_loaded(tmp_path):
    model = _saved(tmp_path)
    # 1. A folder with only a pickled .bin (stock diffusers would fall back to it) is refused.
    os.remove(tmp_path / WEIGHTS)
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        UNet.from_pretrained(tmp_path)
    # 2. A corrupt safetensors next to a (booby-trapped) pickle: error, and the pickle is not touched.
    bomb = tmp_path / "bomb"
    shutil.copytree(tmp_path, bomb)
    torch.save({"x": _Bomb()}, bomb / "diffusion_pytorch_model.bin")
    (bomb / WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match="not a valid safetensors"):
        UNet.from_pretrained(bomb)
    # 3. Asking for pickle explicitly is refused too.
    with pytest.raises(ValueError, match="use_safetensors"):
        UNet.from_pretrained(tmp_path, use_safetensors=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [tiny_unet, tiny_vae, tiny_classifier], ids=["unet", "vae", "classifier"])
def test_torch_dtype_load(make, dtype, tmp_path):
    model = make().eval()
    model.save_pretrained(tmp_path)
    low = type(model).from_pretrained(tmp_path, torch_dtype=dtype).eval()
    assert low.dtype == dtype and all(p.dtype == dtype for p in low.parameters())
    x = randn(2, 3, 8, 8)
    if isinstance(model, VAE):
        out, ref = low(x.to(dtype)).sample, model(x).sample
    elif isinstance(model, NoisyClassifier):
        out, ref = low(x.to(dtype), 5).logits, model(x, 5).logits
    else:
        out, ref = low(x.to(dtype), 5).sample, model(x, 5).sample
    assert out.dtype == dtype
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < (0.05 if dtype == torch.bfloat16 else 0.01)


def test_ddpm_pipeline_save_records_module_path_and_reloads(tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["hf_ddm.models.unet", "UNet"]  # public API: keep this module path stable
    loaded = DDPMPipeline.from_pretrained(tmp_path)
    assert type(loaded.unet) is UNet
    x = randn(1, 3, 8, 8)
    # equal weights; outputs to float rounding (oneDNN may pick another kernel for differently aligned memory)
    assert all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(), pipe.unet.state_dict().values()))
    torch.testing.assert_close(loaded.unet(x, 3).sample, pipe.unet(x, 3).sample, rtol=1e-5, atol=1e-5)


# --- in stock diffusers ----------------------------------------------------------------------------


def test_runs_in_stock_ddpm_pipeline():
    unet = tiny_unet(sample_size=8)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 8, 8, 3)
    assert (out.images >= 0).all() and (out.images <= 1).all()


def test_vae_matches_autoencoderkl_call_shapes():
    for name in ("encode", "decode", "forward"):
        ours = list(inspect.signature(getattr(VAE, name)).parameters)
        theirs = list(inspect.signature(getattr(AutoencoderKL, name)).parameters)
        assert ours == theirs, name
    vae = tiny_vae()
    x = randn(2, 3, 8, 8)
    enc = vae.encode(x)
    assert isinstance(enc, AutoencoderKLOutput) and isinstance(enc.latent_dist, DiagonalGaussianDistribution)
    post = enc.latent_dist
    assert post.mode().shape == (2, 2, 4, 4)  # latent_channels, /2 per down level
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(post.sample(g()), post.sample(g()))
    assert post.kl().shape == (2,) and post.nll(post.mode()).shape == (2,)
    dec = vae.decode(post.mode())
    assert isinstance(dec, DecoderOutput) and dec.sample.shape == x.shape
    (p,) = vae.encode(x, return_dict=False)
    (d,) = vae.decode(p.mode(), return_dict=False)
    torch.testing.assert_close(d, vae(x).sample)
    assert vae(x, sample_posterior=True, generator=g()).sample.shape == x.shape
    assert vae.config.scaling_factor == 0.18215 and vae.config.latent_channels == 2


def test_vae_loss_is_the_negative_elbo():
    vae = tiny_vae()
    x = randn(3, 3, 8, 8)
    out = vae.loss(x, kl_weight=0.25, sample_posterior=False)
    post, recon = out.posterior, out.reconstruction
    d = x[0].numel()
    rec = (0.5 * ((x - recon) ** 2).sum((1, 2, 3)) + 0.5 * d * math.log(2 * math.pi)).mean()
    kl = (0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).sum((1, 2, 3))).mean()
    torch.testing.assert_close(out.reconstruction_loss, rec)
    torch.testing.assert_close(out.kl_loss, kl)
    torch.testing.assert_close(out.loss, rec + 0.25 * kl)
    l1 = vae.loss(x, kl_weight=0.0, sample_posterior=False, reconstruction="l1", decoder_std=0.5)
    torch.testing.assert_close(l1.loss, ((x - recon).abs().sum((1, 2, 3)) / 0.5 + d * math.log(1.0)).mean())
    with pytest.raises(ValueError, match="reconstruction"):
        vae.loss(x, reconstruction="ssim")


# --- classifier --------------------------------------------------------------------------------


def test_classifier_output_and_guidance_gradient():
    clf = tiny_classifier().eval()
    x, y, t = randn(3, 3, 8, 8), torch.tensor([0, 2, 1]), torch.tensor([5, 50, 500])
    out = clf(x, t)
    assert isinstance(out, NoisyClassifierOutput) and out.logits.shape == (3, 3)
    # Reference: autograd of log_softmax picked at y, one sample at a time.
    ref = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        lp = F.log_softmax(clf(xi, t[i : i + 1]).logits, -1)[0, y[i]]
        ref.append(torch.autograd.grad(lp, xi)[0])
    with torch.no_grad():  # as in a sampling loop
        grad = clf.grad_log_prob(x, t, y)
    assert grad.shape == x.shape and not grad.requires_grad
    torch.testing.assert_close(grad, torch.cat(ref), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in clf.parameters())  # parameters untouched


# --- training behaviour ----------------------------------------------------------------------------


def _overfit(model, loss_fn, steps, lr=2e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    return first, float(loss_fn().detach())


def test_unet_overfits_a_tiny_batch():
    unet = tiny_unet()
    x, eps, t = randn(4, 3, 8, 8), randn(4, 3, 8, 8, seed=1), torch.tensor([3, 10, 30, 60])
    first, last = _overfit(unet, lambda: F.mse_loss(unet(0.8 * x + 0.6 * eps, t).sample, eps), steps=60)
    assert last < first / 100, (first, last)  # measured ~2000x


def test_vae_overfits_a_tiny_batch():
    vae = tiny_vae()
    x = randn(4, 3, 8, 8).tanh()
    loss = lambda: vae.loss(x, kl_weight=1e-3, sample_posterior=False).reconstruction_loss  # noqa: E731
    const = 0.5 * x[0].numel() * math.log(2 * math.pi)  # the Gaussian NLL's floor at a perfect reconstruction
    first, last = _overfit(vae, lambda: loss() - const, steps=60)
    assert last < first / 50, (first, last)  # measured ~600x


def test_classifier_overfits_a_tiny_batch():
    clf = tiny_classifier()
    x, y, t = randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 5, 9, 20, 40, 80])
    first, last = _overfit(clf, lambda: F.cross_entropy(clf(x, t).logits, y), steps=60)
    assert last < first / 10, (first, last)  # measured ~18x after 40 steps


@pytest.mark.parametrize("make", [
    lambda: tiny_unet(num_class_embeds=3, cross_attention_dim=8),
    tiny_vae,
    tiny_classifier,
], ids=["unet", "vae", "classifier"])
def test_gradient_checkpointing_same_gradients(make):
    model = make().train()
    x = randn(2, 3, 8, 8)
    if isinstance(model, UNet):
        ctx = randn(2, 4, 8, seed=3)
        run = lambda: model(x, 7, class_labels=torch.tensor([0, 2]), encoder_hidden_states=ctx).sample  # noqa
    elif isinstance(model, VAE):
        run = lambda: model(x).sample  # noqa: E731
    else:
        run = lambda: model(x, 7).logits  # noqa: E731

    def grads():
        model.zero_grad()
        run().square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = grads()
    calls = []

    def counting_checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(counting_checkpoint)
    assert model.is_gradient_checkpointing
    got = grads()
    assert "ResBlock" in calls  # the checkpoint path actually ran
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6, msg=n)
    # default diffusers checkpoint function works too, and it switches off again
    model.enable_gradient_checkpointing()
    assert grads().keys() == ref.keys()
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
