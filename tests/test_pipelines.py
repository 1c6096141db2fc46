"""Pipelines: guidance on the exact mixture (classes = components), any scheduler in any pipeline,
saving/loading, conditioning shapes, bad input."""

import json
import os

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import FrozenDict

from hf_ddm.adapter import ModelAdapter
from hf_ddm.mixture import GaussianMixture
from hf_ddm.models import VAE, NoisyClassifier, UNet
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline, PixelDiffusionPipeline
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.ve import VEScheduler
from hf_ddm.schedulers.vp import VPScheduler
from hf_ddm.text import build_text_encoder, build_tokenizer

# Three well-separated components in R^2, laid out as (B, 2, 1, 1) "images".
MIX = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.25, 0.25, 0.25], [0.5, 0.3, 0.2])
N = 600


class _Config(FrozenDict):
    pass


class OracleUNet:
    """The exact mixture network behind the U-Net call signature (class_labels: the component, or
    the null class = num_class_embeds for the unconditional)."""

    dtype = torch.float64
    device = torch.device("cpu")

    def __init__(self, scheduler_ref, conditional=False):
        self.scheduler_ref = scheduler_ref
        self.config = _Config(sample_size=1, in_channels=2, num_class_embeds=3 if conditional else None)
        self.calls = 0

    def __call__(self, x, t, class_labels=None, **_):
        self.calls += 1
        adapter = ModelAdapter(None, self.scheduler_ref())
        a, s = adapter.noise_level(t, x)
        kind = adapter.prediction_type
        flat = x.reshape(x.shape[0], 2)
        out = MIX.prediction(flat, a, s, kind)
        if class_labels is not None:  # rows with the null class keep the unconditional output
            cond = MIX.prediction(flat, a, s, kind, class_labels.clamp(max=2))
            out = torch.where((class_labels == 3)[:, None], out, cond)
        return type("Out", (), {"sample": out.reshape(x.shape)})


class OracleClassifier:
    """grad_x log p(y | x_t) of the exact class posterior."""

    dtype = torch.float64

    def __init__(self, scheduler_ref):
        self.scheduler_ref = scheduler_ref
        self.config = _Config(in_channels=2, num_classes=3)

    def grad_log_prob(self, x, t, labels):
        a, s = ModelAdapter(None, self.scheduler_ref()).noise_level(t[0], x)
        flat = x.reshape(x.shape[0], 2)
        # grad log p(y|x) = score(x | y) - score(x).
        g = MIX.score(flat, a, s, labels) - MIX.score(flat, a, s)
        return g.reshape(x.shape)


def _oracle_pipe(cls, scheduler, **kw):
    holder = {}
    ref = lambda: holder["pipe"].scheduler  # noqa: E731  (the oracle follows scheduler swaps)
    if cls is ClassifierGuidedPipeline:
        pipe = cls(unet=OracleUNet(ref), classifier=OracleClassifier(ref), scheduler=scheduler)
    else:
        pipe = cls(unet=OracleUNet(ref, **kw), scheduler=scheduler)
    holder["pipe"] = pipe
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _weights(samples):
    return MIX.component_weights(samples.reshape(samples.shape[0], 2).double())


# Mixture means sit outside [-1, 1], so diffusers' default x0 clipping is switched off.
SCHEDULERS = {
    "vp-ddim": lambda: VPScheduler(sampler="ddim", timestep_spacing="trailing", clip_sample=False),
    "vp-ddpm": lambda: VPScheduler(timestep_spacing="trailing", clip_sample=False),
    "sde-vp-multistep": lambda: SDEScheduler(sde="vp", solver="multistep", prediction_type="epsilon"),
    "sde-ve-heun": lambda: SDEScheduler(sde="ve", solver="ode_heun", prediction_type="epsilon", sigma_max=20.0),
    "diffusers-ddim": lambda: DDIMScheduler(timestep_spacing="trailing", clip_sample=False),
    "diffusers-euler": lambda: EulerDiscreteScheduler(timestep_spacing="trailing"),
    "diffusers-heun": lambda: HeunDiscreteScheduler(timestep_spacing="trailing"),
    "diffusers-dpm++": lambda: DPMSolverMultistepScheduler(),
    "diffusers-unipc": lambda: UniPCMultistepScheduler(),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_classifier_guidance_with_exact_posterior(name):
    pipe = _oracle_pipe(ClassifierGuidedPipeline, SCHEDULERS[name]())
    g = torch.Generator().manual_seed(0)
    steps = 30
    x = pipe(class_labels=2, batch_size=N, guidance_scale=1.0, num_inference_steps=steps, generator=g,
             output_type="latent").images
    w = _weights(x)
    assert w[2] > 0.95, f"{name}: scale 1 must sample the conditional, got weights {w.tolist()}"
    x0 = pipe(class_labels=2, batch_size=N, guidance_scale=0.0, num_inference_steps=steps, generator=g,
              output_type="latent").images
    w0 = _weights(x0)
    # scale 0 leaves the marginal: weights within 4.5 binomial std of (0.5, 0.3, 0.2).
    tol = 4.5 * (MIX.weights * (1 - MIX.weights) / N).sqrt()
    assert ((w0 - MIX.weights).abs() < tol).all(), f"{name}: scale 0 changed the marginal: {w0.tolist()}"


@pytest.mark.parametrize("name", ["vp-ddim", "sde-vp-multistep", "diffusers-dpm++"])
def test_classifier_free_guidance_at_one_is_the_conditional(name):
    pipe = _oracle_pipe(PixelDiffusionPipeline, SCHEDULERS[name](), conditional=True)
    g = torch.Generator().manual_seed(1)
    x = pipe(batch_size=N, class_labels=1, guidance_scale=1.0, num_inference_steps=25, generator=g,
             output_type="latent").images
    assert _weights(x)[1] > 0.97
    mean = x.reshape(N, 2).mean(0)
    assert torch.allclose(mean.double(), MIX.means[1], atol=0.06)
    # w = 0 is the unconditional model; w = 3 concentrates at least as much as w = 1.
    x0 = pipe(batch_size=N, class_labels=1, guidance_scale=0.0, num_inference_steps=25, generator=g,
              output_type="latent").images
    assert abs(float(_weights(x0)[1]) - 0.3) < 0.09
    x3 = pipe(batch_size=N, class_labels=1, guidance_scale=3.0, num_inference_steps=25, generator=g,
              output_type="latent").images
    assert _weights(x3)[1] >= 0.97


# The step callback's pred_original_sample (the model adapter's x0) against each scheduler's own x0 from
# the same model output: diffusers' from its sigmas / alphas_cumprod, hf_ddm's from its process. Euler
# scales the model input and passes fractional timesteps; v-prediction exercises a non-trivial conversion.
CALLBACK_SCHEDULERS = {
    "vp-v": lambda: VPScheduler(clip_sample=False, prediction_type="v_prediction"),
    "sde-vp": lambda: SDEScheduler(sde="vp", solver="multistep", prediction_type="epsilon"),
    "diffusers-ddim": lambda: DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False),
    "diffusers-euler-v": lambda: EulerDiscreteScheduler(prediction_type="v_prediction"),
}


@pytest.mark.parametrize("name", list(CALLBACK_SCHEDULERS))
def test_step_callback_gets_the_predicted_clean_sample(name):
    sched = CALLBACK_SCHEDULERS[name]()
    pipe = _oracle_pipe(PixelDiffusionPipeline, sched)
    own, seen = [], []
    step = sched.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        own.append(out.pred_original_sample)
        return out

    def on_step(p, i, t, tensors):
        assert set(tensors) == {"latents", "pred_original_sample"}
        seen.append(tensors["pred_original_sample"])
        return {}

    sched.step = recording_step
    pipe(batch_size=16, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="latent",
         callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"])
    assert len(seen) == len(own) == 6
    for mine, theirs in zip(seen, own):
        torch.testing.assert_close(mine, theirs.to(mine.dtype), rtol=1e-4, atol=1e-4)
    # The last x0-prediction is the mixture's own denoiser at a low noise level: near a component mean.
    assert float(MIX.posterior(seen[-1].reshape(16, 2), 1.0, 0.0).max(1).values.min()) > 0.9
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(num_inference_steps=2, callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["denoised"])


# --- any scheduler in a real-network pipeline ---------------------------------------------------------

def tiny_unet(**kw):
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
               attention_levels=(1,), norm_num_groups=8, attention_head_dim=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return UNet(**cfg)


# VEScheduler is not among them: a VP model on the VE process is refused (tests/test_plugin_matrix.py).
SWAPS = [VPScheduler, SDEScheduler, DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
         DPMSolverMultistepScheduler, UniPCMultistepScheduler]


@pytest.mark.parametrize("cls", SWAPS, ids=lambda c: c.__name__)
def test_any_scheduler_fits_via_from_config(cls):
    pipe = PixelDiffusionPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 8, 8, 3)
    assert (out.images >= 0).all() and (out.images <= 1).all()
    # The reported NFE is the number of U-Net calls the loop made.
    assert pipe.num_model_evaluations == len(pipe.scheduler.timesteps)


def test_seeded_reproducibility_and_generator_lists():
    pipe = PixelDiffusionPipeline(tiny_unet(), VPScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    run = lambda gen, n: pipe(batch_size=n, num_inference_steps=3, generator=gen, output_type="pt").images  # noqa
    a = run(torch.Generator().manual_seed(3), 2)
    b = run(torch.Generator().manual_seed(3), 2)
    assert torch.equal(a, b)
    # Per-image generators: image i depends only on generator i.
    both = run([torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)], 2)
    single = run([torch.Generator().manual_seed(6)], 1)
    torch.testing.assert_close(both[1:], single, atol=1e-5, rtol=0)


# --- conditioning, saving and loading ---------------------------------------------------------------

PROMPTS = ["a photo of a sneaker", "a photo of a bag", "a photo of a shirt"]


def tiny_text_pipe():
    tok = build_tokenizer(PROMPTS, max_length=8)
    torch.manual_seed(0)
    enc = build_text_encoder(tok, hidden_size=32, layers=1, heads=2)
    vae = VAE(in_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    unet = tiny_unet(sample_size=4, in_channels=4, out_channels=4, cross_attention_dim=32)
    pipe = LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=VPScheduler(num_train_timesteps=50),
                                   text_encoder=enc, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_conditioned_latent_pipeline_shapes_and_guidance():
    pipe = tiny_text_pipe()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = pipe(prompt=PROMPTS[:2], guidance_scale=3.0, num_inference_steps=3, generator=g(), output_type="pt").images
    assert out.shape == (2, 3, 8, 8)
    uncond = pipe(batch_size=2, num_inference_steps=3, generator=g(), output_type="pt").images
    assert not torch.allclose(out, uncond)  # the prompt reaches the network
    latents = pipe(prompt="a photo of a bag", batch_size=3, num_inference_steps=2, generator=g(),
                   output_type="latent").images
    assert latents.shape == (3, 4, 4, 4)


def test_class_conditioned_latent_pipeline(tmp_path):
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    unet = tiny_unet(sample_size=4, in_channels=2, out_channels=2, num_class_embeds=10)
    names = [f"class {i}" for i in range(10)]
    pipe = LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=VPScheduler(num_train_timesteps=50),
                                   class_names=names)
    pipe.set_progress_bar_config(disable=True)
    imgs = pipe(class_labels=[0, 9, 3], guidance_scale=2.0, num_inference_steps=2, output_type="np").images
    assert imgs.shape == (3, 8, 8, 1)
    # Class names are saved in model_index.json and accepted in place of ids.
    pipe.save_pretrained(tmp_path)
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert list(loaded.config.class_names) == names
    kw = dict(guidance_scale=2.0, num_inference_steps=2, output_type="pt")
    by_name = loaded(class_labels=["class 9", "class 3"], generator=torch.Generator().manual_seed(0), **kw).images
    by_id = loaded(class_labels=[9, 3], generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(by_name, by_id)
    # Any case, as the Space reads them ("sneaker" for "Sneaker").
    by_case = loaded(class_labels=["CLASS 9", " class 3 "], generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(by_case, by_id)
    # output_images (what few-step calibration measures on): the latents decoded and clamped, i.e. the output
    latents = loaded(class_labels=[9, 3], generator=torch.Generator().manual_seed(0),
                     **{**kw, "output_type": "latent"}).images
    torch.testing.assert_close(loaded.output_images(latents) / 2 + 0.5, by_id)
    pixel = PixelDiffusionPipeline(unet=tiny_unet(), scheduler=VPScheduler(num_train_timesteps=50))
    assert pixel.output_images(torch.tensor([[[[-3.0, 0.5, 2.0]]]])).tolist() == [[[[-1.0, 0.5, 1.0]]]]
    with pytest.raises(ValueError, match="class_names"):
        loaded(class_labels=["dog"], num_inference_steps=2)
    with pytest.raises(ValueError, match="class_labels"):
        pipe(class_labels=[10], num_inference_steps=2)
    with pytest.raises(ValueError, match="prompt"):
        pipe(prompt="a bag", num_inference_steps=2)


def test_default_guidance_scale_is_saved_and_used(tmp_path):
    """A folder's ``default_guidance_scale`` (the card's recommendation) is what a call without
    ``guidance_scale`` uses, after a save and load too; a folder without one samples at 1.0, as before."""
    unet = tiny_unet(in_channels=1, out_channels=1, num_class_embeds=3)
    pipe = PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20), default_guidance_scale=4.0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = PixelDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)

    def run(p, **kw):
        return p(class_labels=[0, 2], num_inference_steps=3, output_type="pt",
                 generator=torch.Generator().manual_seed(0), **kw).images

    torch.testing.assert_close(run(loaded), run(loaded, guidance_scale=4.0))
    assert not torch.allclose(run(loaded), run(loaded, guidance_scale=1.0))
    plain = PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20))
    plain.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(plain), run(plain, guidance_scale=1.0))
    with pytest.raises(ValueError, match="default_guidance_scale"):
        PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=20), default_guidance_scale=float("nan"))


def test_save_load_identical_outputs(tmp_path):
    pipe = tiny_text_pipe()
    kw = dict(prompt=PROMPTS[0], guidance_scale=2.0, num_inference_steps=3, output_type="pt")
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["latent_pipeline", "LatentDiffusionPipeline"]
    assert (tmp_path / "latent_pipeline.py").exists()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    for loader in (
        lambda: DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True),
        lambda: LatentDiffusionPipeline.from_pretrained(tmp_path),
    ):
        loaded = loader()
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded).__name__ == "LatentDiffusionPipeline"
        torch.testing.assert_close(loaded(generator=torch.Generator().manual_seed(0), **kw).images, ref)
    assert type(LatentDiffusionPipeline.from_pretrained(tmp_path)) is LatentDiffusionPipeline


def test_saved_folder_loads_in_a_fresh_process_without_importing_hf_ddm(tmp_path):
    """diffusers loads hf_ddm components only from imported modules; the pipeline file of a non-portable
    save imports hf_ddm, which imports them all, so a plain DiffusionPipeline.from_pretrained works in a
    new process where hf_ddm is installed."""
    import subprocess
    import sys

    pipe = PixelDiffusionPipeline(tiny_unet(num_class_embeds=3), SDEScheduler(sde="vp", solver="multistep"))
    pipe.save_pretrained(tmp_path, portable=False)
    code = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "assert 'hf_ddm' in sys.modules and type(p).__name__ == 'PixelDiffusionPipeline'\n"
        "assert type(p.scheduler).__name__ == 'SDEScheduler'\n"
        "p.set_progress_bar_config(disable=True)\n"
        "print(p(batch_size=1, class_labels=[2], num_inference_steps=2, output_type='np').images.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 8, 8, 3)" in out.stdout


def test_hub_id_resolves_from_the_offline_cache(tmp_path, monkeypatch):
    """A Hub id loads from the standard cache layout with HF_HUB_OFFLINE=1 (no network)."""
    pipe = PixelDiffusionPipeline(tiny_unet(), VPScheduler(num_train_timesteps=50))
    src = tmp_path / "src"
    pipe.save_pretrained(src)
    cache = tmp_path / "hub"
    repo = cache / "models--hf-ddm--tiny-pixel"
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for root, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), src)
            os.makedirs(snap / os.path.dirname(rel), exist_ok=True)
            with open(os.path.join(root, f), "rb") as fi, open(snap / rel, "wb") as fo:
                fo.write(fi.read())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = PixelDiffusionPipeline.from_pretrained("hf-ddm/tiny-pixel", cache_dir=cache)
    loaded.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, num_inference_steps=2, output_type="pt")
    torch.testing.assert_close(loaded(generator=torch.Generator().manual_seed(0), **kw).images,
                               pipe(generator=torch.Generator().manual_seed(0), **kw).images)


def test_bad_input_is_refused_clearly():
    pipe = PixelDiffusionPipeline(tiny_unet(num_class_embeds=3), VPScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(class_labels=1, guidance_scale=float("nan"), num_inference_steps=2)
    with pytest.raises(ValueError, match="class_labels"):
        pipe(class_labels=[5], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="jpeg", num_inference_steps=2)
    with pytest.raises(ValueError, match="generator"):
        pipe(batch_size=2, generator=[torch.Generator()], num_inference_steps=2)
    vae = VAE(in_channels=3, latent_channels=4, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4)
    with pytest.raises(ValueError, match="latent_channels"):
        LatentDiffusionPipeline(unet=tiny_unet(), vae=vae, scheduler=VPScheduler())
    clf = NoisyClassifier(in_channels=4, num_classes=3, block_out_channels=(16,), layers_per_block=1, norm_num_groups=8,
                          attention_levels=(), attention_head_dim=8)
    with pytest.raises(ValueError, match="in_channels"):
        ClassifierGuidedPipeline(unet=tiny_unet(), classifier=clf, scheduler=VPScheduler())


def test_push_to_hub_uploads_the_complete_folder(tmp_path, monkeypatch):
    """The upload happens after the pipeline's code file is written (diffusers would push before)."""
    import huggingface_hub

    seen = {}

    class Repo:
        repo_id = "someone/tiny"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: seen.setdefault("repo", repo_id) and Repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder",
                        lambda repo_id, folder_path, **kw: seen.update(files=sorted(os.listdir(folder_path)), to=repo_id))
    pipe = PixelDiffusionPipeline(tiny_unet(), VPScheduler(num_train_timesteps=50))
    pipe.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="someone/tiny")
    assert seen["repo"] == "someone/tiny" and seen["to"] == "someone/tiny"
    assert {"model_index.json", "pixel_pipeline.py", "unet", "scheduler"} <= set(seen["files"])


def test_class_names_match_exactly_first_then_ignoring_case_when_that_is_unambiguous():
    from hf_ddm.pipeline_utils import class_name_index

    names = ["Sneaker", "Bag", "bag"]
    assert class_name_index(names, "sneaker") == 0 and class_name_index(names, " SNEAKER") == 0
    assert class_name_index(names, "bag") == 2 and class_name_index(names, "Bag") == 1
    assert class_name_index(names, "BAG") is None  # two names fold to it: no guess
    assert class_name_index(names, "dog") is None and class_name_index(names, 3) is None
