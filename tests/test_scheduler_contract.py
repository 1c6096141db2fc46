"""diffusers' scheduler contract, checked on every hf_ddm scheduler class and every solver of the registry,
each against the diffusers class it stands in for: config save/load and round trips through every class in
``compatibles`` and back, ``step`` with and without a generator and with the positional arguments of the
stood-in class, ``add_noise`` with per-sample timesteps, ``scale_model_input``, custom ``timesteps``,
entering a schedule mid-way (img2img) with and without ``set_begin_index``, thresholding, stepping before
``set_timesteps``, float16 / bfloat16 -- and the configs hf_ddm refuses (EDM, flow matching) refused by name.

The numbered comments are the items of the contract issue each test pins down."""

import inspect

import pytest
import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils import DummyObject

from hf_ddm.schedulers import SDEScheduler, VEScheduler, VPScheduler
from hf_ddm.solver_registry import SOLVERS, names_in

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Every scheduler class x every solver it runs, as a user builds it: on a diffusers model's schedule
# (SDEScheduler.from_config) and on hf_ddm's own processes.
SD_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = {
    **{f"sde-{n}": (lambda n: lambda: SDEScheduler.from_config(DDPMScheduler().config, solver=n))(n) for n in SOLVERS},
    **{f"sde-continuous-{n}": (lambda n: lambda: SDEScheduler(solver=n))(n) for n in SOLVERS},
    "sde-ve-pc": lambda: SDEScheduler(sde="ve", solver="pc"),
    "sde-subvp-ode_heun": lambda: SDEScheduler(sde="subvp", solver="ode_heun"),
    **{f"vp-{n}": (lambda n: lambda: VPScheduler(sampler=n))(n) for n in names_in("VPScheduler")},
    **{f"ve-{n}": (lambda n: lambda: VEScheduler(predictor=n, num_train_timesteps=100, sigma_max=20.0))(n)
       for n in names_in("VEScheduler")},
}
STEPS = 3
SHAPE = (2, 1, 4, 4)


def model(x, t):  # an epsilon-like output that depends on the sample (a zero output hides too much)
    return 0.3 * x


def run_loop(sched, x, timesteps=None, generator=None, dtype=None):
    for t in sched.timesteps if timesteps is None else timesteps:
        inp = sched.scale_model_input(x, t)
        x = sched.step(model(inp, t).to(x.dtype), t, x, generator=generator).prev_sample
    return x


def start(sched, seed=0, dtype=torch.float32):
    return (torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma).to(dtype)


def init_config(sched):
    """The config as its class reads it back (diffusers' bookkeeping keys left out)."""
    return {k: v for k, v in sched.config.items() if not k.startswith("_")}


def compatible_classes(sched):
    return [c for c in sched.compatibles if not isinstance(c, DummyObject) and c is not type(sched)]


@pytest.mark.parametrize("case", CASES)
def test_save_load_and_round_trips_through_every_compatible_class(case, tmp_path):
    # 2: through each compatible diffusers class and back gives the same scheduler, defaults included
    # (diffusers leaves keys at their defaults out of the other class's config).
    sched = CASES[case]()
    sched.save_pretrained(tmp_path)
    assert init_config(type(sched).from_pretrained(tmp_path)) == init_config(sched)
    classes = compatible_classes(sched)
    assert classes
    for other in classes:
        back = type(sched).from_config(other.from_config(sched.config).config)
        assert init_config(back) == init_config(sched), other.__name__


def test_a_non_default_solver_survives_a_compatible_class():
    # 2, as reported: sde left at its default is dropped by diffusers; the solver key still marks our config.
    s = SDEScheduler(beta_schedule="linear", solver="ode_heun")
    back = SDEScheduler.from_config(EulerDiscreteScheduler.from_config(s.config).config)
    assert back.config.solver == "ode_heun" and back.config.beta_schedule == "linear"


@pytest.mark.parametrize("case", CASES)
def test_step_with_and_without_generator_and_the_loop_contract(case):
    sched = CASES[case]()
    sched.set_timesteps(STEPS)
    x = start(sched)
    assert torch.equal(sched.scale_model_input(x, sched.timesteps[0]), x)
    a = run_loop(sched, x, generator=torch.Generator().manual_seed(1))
    sched.set_timesteps(STEPS)
    b = run_loop(sched, x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)  # the same generator, the same sample
    sched.set_timesteps(STEPS)
    c = run_loop(sched, x)  # no generator: the global one
    assert torch.isfinite(c).all()
    out = sched.step(model(x, sched.timesteps[0]), sched.timesteps[0], x, return_dict=False) \
        if isinstance(sched, VPScheduler) else None
    assert out is None or (isinstance(out, tuple) and out[0].shape == x.shape)


# VE noise levels in float16 / bfloat16 have their own tests (tests/test_float16_sampling.py samples every VE
# scheduler, tests/test_hostile_inputs.py refuses a start noise the dtype cannot hold): not collected here.
LOW_PRECISION_CASES = [c for c, make in CASES.items()
                       if not isinstance(make(), VEScheduler) and make().init_noise_sigma <= 100]


@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_loop(case, dtype):
    sched = CASES[case]()
    sched.set_timesteps(STEPS)
    out = run_loop(sched, start(sched, dtype=dtype), generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES)
def test_add_noise_takes_per_sample_timesteps(case):
    sched = CASES[case]()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = sched.sample_training_timesteps(SHAPE[0], generator=torch.Generator().manual_seed(0))
    both = sched.add_noise(x0, noise, t)
    for i in range(SHAPE[0]):
        torch.testing.assert_close(both[i:i + 1], sched.add_noise(x0[i:i + 1], noise[i:i + 1], t[i:i + 1]))


@pytest.mark.parametrize("case", CASES)
def test_entering_mid_schedule_with_and_without_set_begin_index(case):
    # 5: img2img's loop over timesteps[t_start * order:], with set_begin_index (newer pipelines) or without.
    sched = CASES[case]()
    sched.set_timesteps(4)
    begin = 2 * sched.order
    rest = sched.timesteps[begin:]
    x = torch.randn(SHAPE) * 0.5
    without = run_loop(sched, x, rest, generator=torch.Generator().manual_seed(3))
    sched.set_timesteps(4)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    with_index = run_loop(sched, x, rest, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(without, with_index)


def test_heun_entered_mid_way_as_reported():
    # 5: a repeated timestep is the start of a step at the first call, as diffusers' Heun takes it.
    sched = SDEScheduler.from_config(HeunDiscreteScheduler().config, solver="ode_heun")
    sched.set_timesteps(10)
    out = run_loop(sched, torch.randn(SHAPE) * 0.3, sched.timesteps[16:])
    assert torch.isfinite(out).all()


# --- 4: positional arguments are those of the class each scheduler stands in for -----------------------

def positional(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "self"]


def test_positional_signatures_are_the_stood_in_classes():
    assert positional(SDEScheduler.step) == positional(DPMSolverMultistepScheduler.step)
    assert positional(VEScheduler.step) == positional(diffusers.ScoreSdeVeScheduler.step_pred)
    # Every keyword a stock pipeline looks up in step's signature is there.
    for cls in (SDEScheduler, VPScheduler, VEScheduler):
        params = inspect.signature(cls.step).parameters
        assert {"eta", "generator"} <= set(params), cls


def test_vp_ddim_fourth_positional_is_eta_as_in_ddim():
    cfg = dict(clip_sample=False)
    ours, theirs = VPScheduler(sampler="ddim", **cfg), DDIMScheduler(**cfg)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, m, t = torch.randn(SHAPE), torch.randn(SHAPE), theirs.timesteps[2]
    a = ours.step(m, t, x, 1.0, False, torch.Generator().manual_seed(0)).prev_sample
    b = theirs.step(m, t, x, 1.0, False, torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, ours.step(m, t, x, 0.0).prev_sample)  # eta = 1 is not eta = 0
    # With eta in the config, a positional eta = 0 still means eta (it used to be an AttributeError).
    torch.testing.assert_close(VPScheduler(sampler="ddim", eta=1.0, **cfg).step(m, t, x, 0.0).prev_sample
                               if False else _stepped(VPScheduler(sampler="ddim", eta=1.0, **cfg), m, t, x, 0.0),
                               theirs.step(m, t, x, 0.0).prev_sample, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="multiple values for argument 'eta'"):
        ours.step(m, t, x, 1.0, eta=1.0)


def _stepped(sched, m, t, x, *args):
    sched.set_timesteps(10)
    return sched.step(m, t, x, *args).prev_sample


def test_vp_ddpm_fourth_positional_is_the_generator_as_in_ddpm():
    ours, theirs = VPScheduler(), DDPMScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, m, t = torch.randn(SHAPE), torch.randn(SHAPE), theirs.timesteps[2]
    a = ours.step(m, t, x, torch.Generator().manual_seed(0)).prev_sample
    b = theirs.step(m, t, x, torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert ours.step(m, t, x, None, False)[0].shape == x.shape  # return_dict, positionally


# --- 7: stepping before set_timesteps --------------------------------------------------------------

@pytest.mark.parametrize("sampler", names_in("VPScheduler"))
def test_vp_steps_before_set_timesteps_as_ddpm_does(sampler):
    ours, theirs = VPScheduler(sampler=sampler), DDPMScheduler()
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    for t in (999, 500, 0):
        a = ours.step(m, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        if sampler == "ddpm":  # DDPMScheduler's init-time schedule: every train timestep, t -> t - 1
            b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(a).all()


# --- 6: thresholding accepted as diffusers accepts it ----------------------------------------------

@pytest.mark.parametrize("keys", [dict(sample_max_value=0.5), dict(dynamic_thresholding_ratio=0.0),
                                  dict(dynamic_thresholding_ratio=1.0, sample_max_value=3.0)], ids=str)
def test_thresholding_is_accepted_and_computed_as_diffusers(keys):
    cfg = dict(thresholding=True, clip_sample=False, **keys)
    ours, theirs = VPScheduler(**cfg), DDPMScheduler(**cfg)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, m, t = torch.randn(SHAPE) * 3, torch.randn(SHAPE), theirs.timesteps[1]
    a = ours.step(m, t, x, generator=torch.Generator().manual_seed(0))
    b = theirs.step(m, t, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5)
    sde = SDEScheduler.from_config(DPMSolverMultistepScheduler(thresholding=True, **keys).config)
    assert sde.config.thresholding and sde.config.sample_max_value == cfg.get("sample_max_value", 1.0)


# --- 1: custom timesteps ---------------------------------------------------------------------------

@pytest.mark.parametrize("solver", SOLVERS)
def test_custom_timesteps_on_a_diffusers_schedule(solver):
    sched = SDEScheduler.from_config(DDPMScheduler().config, solver=solver)
    sched.set_timesteps(timesteps=[999, 500, 0])
    dpm = DPMSolverMultistepScheduler()
    dpm.set_timesteps(timesteps=[999, 500, 0])
    assert sched.num_inference_steps == 3
    # One entry per model call: the step starts themselves, repeated by the multi-call solvers.
    assert sorted(set(sched.timesteps.tolist()), reverse=True) == dpm.timesteps.tolist()
    assert torch.isfinite(run_loop(sched, start(sched), generator=torch.Generator().manual_seed(0))).all()


def test_custom_timesteps_outside_a_continuous_process_are_refused_by_range():
    with pytest.raises(ValueError, match=r"timesteps must lie in \[1, 1000\]"):
        SDEScheduler().set_timesteps(timesteps=[999, 500, 0])  # t = 0: s = 0, the score is singular


def test_vp_custom_timesteps_are_ddpms():
    ours, theirs = VPScheduler(), DDPMScheduler()
    ours.set_timesteps(timesteps=[900, 450, 30])
    theirs.set_timesteps(timesteps=[900, 450, 30])
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


# --- 8: switching back to the checkpoint's own sampler is lossless -----------------------------------

CHECKPOINTS = {  # the scheduler configs of well-known checkpoints (their sampler keys are the point)
    "sd15-pndm": lambda: PNDMScheduler(steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False, **SD_CONFIG),
    "sdxl-euler": lambda: EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                                                 **SD_CONFIG),
    "zero-snr-ddim": lambda: DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                           prediction_type="v_prediction", clip_sample=False),
}


@pytest.mark.parametrize("ours", [SDEScheduler, VPScheduler])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_switching_back_gives_the_checkpoints_own_sampler(name, ours, tmp_path):
    theirs = CHECKPOINTS[name]()
    hf = ours.from_config(theirs.config)
    hf.save_pretrained(tmp_path)  # and through a saved folder, as a pipeline is shared
    for cfg in (hf.config, type(hf).from_pretrained(tmp_path).config):
        back = type(theirs).from_config(cfg)
        keys = set(type(theirs)._get_init_keys(type(theirs))) - {"self", "kwargs"}
        assert {k: back.config[k] for k in keys} == {k: theirs.config[k] for k in keys}
        back.set_timesteps(10)
        theirs.set_timesteps(10)
        assert back.timesteps.tolist() == theirs.timesteps.tolist()


# --- 3, 9: EDM and flow-matching configs are refused by name -------------------------------------------

PLAYGROUND_V2_5 = {  # playgroundai/playground-v2.5-1024px-aesthetic, scheduler/scheduler_config.json
    "_class_name": "EDMDPMSolverMultistepScheduler", "_diffusers_version": "0.27.0.dev0", "algorithm_type": "dpmsolver++",
    "dynamic_thresholding_ratio": 0.995, "euler_at_final": False, "final_sigmas_type": "zero", "lower_order_final": True,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": 7.0, "sample_max_value": 1.0, "sigma_data": 0.5,
    "sigma_max": 80.0, "sigma_min": 0.002, "solver_order": 2, "solver_type": "midpoint", "thresholding": False,
}
OTHER_MODELS = {
    "EDMEuler": (lambda: EDMEulerScheduler().config, "sigma_data"),
    "EDMDPMSolverMultistep": (lambda: EDMDPMSolverMultistepScheduler().config, "sigma_data"),
    "playground-v2.5": (lambda: PLAYGROUND_V2_5, "sigma_data"),
    "FlowMatchEuler": (lambda: FlowMatchEulerDiscreteScheduler().config, "shift"),
    "FlowMatchHeun": (lambda: FlowMatchHeunDiscreteScheduler().config, "shift"),
    "flow sigmas": (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True).config, "use_flow_sigmas"),
}


@pytest.mark.parametrize("cls", [SDEScheduler, VPScheduler, VEScheduler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", OTHER_MODELS)
def test_edm_and_flow_matching_configs_are_refused_by_name(name, cls, tmp_path):
    config, key = OTHER_MODELS[name]
    with pytest.raises(ValueError, match=key):
        cls.from_config(config())


# --- issue 27, item 3: a saved config holds the keys its process uses -----------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("sde")])
def test_a_saved_sde_config_holds_only_the_keys_it_uses(case, tmp_path):
    import json

    sched = CASES[case]()
    sched.save_pretrained(tmp_path)
    saved = json.load(open(tmp_path / "scheduler_config.json"))
    assert not set(saved) & set(sched.unused_config_keys())
    if sched.is_discrete_schedule:  # a diffusers schedule: none of the continuous processes' keys
        assert not set(saved) & {"sde", "beta_min", "beta_max", "sigma_min", "sigma_max", "timestep_scale"}
    if not SOLVERS[sched.config.solver].correctors:
        assert not set(saved) & {"snr", "corrector_snr", "correct_steps"}


# What diffusers' DPM-Solver++ warns about when swapped into a shipped folder (the README's usage comment):
# hf_ddm's own sampler keys, and for the continuous sub-VP model its process (DPM-Solver++ cannot run it).
SHIPPED_WARNINGS = {
    "ddpm": ["denoise_final", "log_snr_min", "optimized_timesteps", "solver", "time_grid"],
    "guided": ["denoise_final", "solver", "time_grid"],
    "ldm_class": ["denoise_final", "optimized_timesteps", "solver", "time_grid"],
    "ldm_text": ["denoise_final", "solver", "time_grid"],
    "sde": ["beta_max", "beta_min", "denoise_final", "log_snr_min", "optimized_timesteps", "sde", "solver", "time_grid"],
}


@pytest.mark.parametrize("name", SHIPPED_WARNINGS)
def test_dpm_solver_swapped_into_a_shipped_folder_warns_only_about_hf_ddm_keys(name):
    import os

    folder = os.path.join(os.path.dirname(__file__), "..", "space", "models", name, "scheduler")
    _, unused = DPMSolverMultistepScheduler.from_config(DPMSolverMultistepScheduler.load_config(folder),
                                                        return_unused_kwargs=True)
    known = set(DPMSolverMultistepScheduler._get_init_keys(DPMSolverMultistepScheduler))
    for c in DPMSolverMultistepScheduler().compatibles:
        known |= set(c._get_init_keys(c)) if not isinstance(c, DummyObject) else set()
    assert sorted(k for k in unused if not k.startswith("_") and k not in known) == SHIPPED_WARNINGS[name]


# --- 10: img2img strength means what it means in diffusers -------------------------------------------
# A stock img2img pipeline enters the scheduler's own grid at t_start = N - int(N * strength). On a diffusers
# config SDEScheduler's grid is the config's own timestep_spacing, so strength 0.3 starts where diffusers'
# schedulers start (near timestep 300), not at the bottom of a log-SNR grid.

from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402

from test_plugin_matrix import tiny_sd  # noqa: E402

SPACINGS = {  # a config per timestep_spacing, as checkpoints save them
    "leading": dict(SD_CONFIG, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False),
    "linspace": dict(SD_CONFIG, timestep_spacing="linspace", clip_sample=False),
    "trailing": dict(timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction",
                     clip_sample=False),
}


def img2img_start(scheduler, steps, strength):
    """The first timestep of a stock img2img pipeline (StableDiffusionImg2ImgPipeline.get_timesteps)."""
    pipe = StableDiffusionImg2ImgPipeline(**{**tiny_sd().components, "scheduler": scheduler})
    scheduler.set_timesteps(steps)
    timesteps, _ = pipe.get_timesteps(steps, strength, "cpu")
    return float(timesteps[0])


@pytest.mark.parametrize("solver", ["multistep", "ode_heun", "pc"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_img2img_strength_starts_where_diffusers_schedulers_start(spacing, solver):
    config = DDIMScheduler(**SPACINGS[spacing]).config
    ours = img2img_start(SDEScheduler.from_config(config, solver=solver), 10, 0.3)
    ddim = img2img_start(DDIMScheduler.from_config(config), 10, 0.3)
    dpm = img2img_start(DPMSolverMultistepScheduler.from_config(config), 10, 0.3)
    assert ours == ddim  # the same grid: diffusers' spacing on the train timesteps
    assert abs(ours - dpm) <= 100, (ours, dpm)  # within one of the 10 steps
    assert 200 <= ours <= 320


@pytest.mark.parametrize("spacing", SPACINGS)
def test_sde_grid_from_a_diffusers_config_is_its_spacing(spacing):
    config = DDIMScheduler(**SPACINGS[spacing]).config
    for steps in (1, 4, 7, 10, 50):
        ours, ddim = SDEScheduler.from_config(config), DDIMScheduler.from_config(config)
        ours.set_timesteps(steps)
        ddim.set_timesteps(steps)
        assert ours.timesteps.tolist() == ddim.timesteps.float().tolist()
    sched = SDEScheduler.from_config(config)
    assert sched.config.time_grid == "spacing"
    assert sched.config.timestep_spacing == spacing
    # the caller's grid wins; a config saved by SDEScheduler keeps its own grid
    assert SDEScheduler.from_config(config, time_grid="log_snr").config.time_grid == "log_snr"
    assert SDEScheduler.from_config(SDEScheduler(**SD_CONFIG).config).config.time_grid == "log_snr"


def test_a_diffusers_config_without_timestep_spacing_takes_its_class_default(tmp_path):
    # SD 1.5's scheduler_config.json predates timestep_spacing: PNDMScheduler reads it as "leading"
    import json
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "steps_offset": 1,
                                "skip_prk_steps": True, "set_alpha_to_one": False, **SD_CONFIG}))
    ours, theirs = SDEScheduler.from_config(str(path)), DDIMScheduler.from_config(str(path))
    assert theirs.config.timestep_spacing == "leading"
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.float().tolist()


def test_spacing_grid_needs_a_train_grid():
    with pytest.raises(ValueError, match="time_grid='spacing'"):
        SDEScheduler(time_grid="spacing")  # a continuous process has no train timesteps


@pytest.mark.parametrize("solver", ["multistep", "ode_heun"])
def test_img2img_at_strength_1_reproduces_txt2img(solver):
    # Zero terminal SNR: the top of the grid is pure noise, so img2img at strength 1 forgets the image. The
    # image is given as latents (4 channels: no VAE draw) so both pipelines draw the same noise.
    config = DDIMScheduler(**SPACINGS["trailing"]).config
    txt = tiny_sd()
    txt.scheduler = SDEScheduler.from_config(config, solver=solver)
    img = StableDiffusionImg2ImgPipeline(**txt.components)
    calls = {"txt": [], "img": []}
    common = dict(num_inference_steps=5, guidance_scale=3.0, output_type="latent")
    hook = txt.unet.register_forward_pre_hook(lambda m, a: calls[mode].append(float(a[1].flatten()[0])))
    mode = "txt"
    a = txt("a photo of a cat", height=16, width=16, generator=torch.Generator().manual_seed(0), **common).images
    mode = "img"
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    b = img("a photo of a cat", image=image, strength=1.0, generator=torch.Generator().manual_seed(0), **common).images
    hook.remove()
    assert calls["txt"] == calls["img"] and calls["txt"][0] == 999.0
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()
