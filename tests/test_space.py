"""The Gradio Space (space/): the request handler called directly, the model registry, input limits,
failure isolation, and the launched app driven over HTTP with gradio_client.

Tiny untrained demo models (built once per session into a temp dir), 2-3 steps, 1-2 images.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import gradio as gr

SPACE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "space")
if SPACE_DIR not in sys.path:
    sys.path.append(SPACE_DIR)  # for hf_ddm_space (appended: space/app.py must not shadow anything)

from hf_ddm_space import registry as registry_mod  # noqa: E402
from hf_ddm_space.demo_models import build_pipeline  # noqa: E402
from hf_ddm_space.registry import SPECS, Registry, load_pipeline, resolve  # noqa: E402
from hf_ddm_space.samplers import AS_SAVED, solver_of  # noqa: E402
from hf_ddm_space.ui import CYCLE, DEFAULT_SAMPLER, Limits, SpaceApp, build_demo  # noqa: E402


class NoProgress:
    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, **_):
        self.calls.append((value, desc))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The app runs one torch thread per request (cores / concurrency); so do these tests. On a shared, loaded
    CPU this is also 3-4x faster than intra-op threads spinning against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def space_env(tmp_path_factory):
    """Demo models in a session temp dir; no shipped folder, no env override (so the tests use the tiny
    demo models even after real checkpoints land in space/models/)."""
    root = tmp_path_factory.mktemp("space")
    saved = {k: v for k, v in os.environ.items() if k.startswith("HF_DDM_MODEL_") or k.startswith("HF_DDM_SPACE_")}
    for k in saved:
        del os.environ[k]
    os.environ["HF_DDM_SPACE_DEMO_CACHE"] = str(root / "demo-cache")
    os.environ["HF_DDM_SPACE_MODELS_DIR"] = str(root / "no-models")
    yield root
    for k in [k for k in os.environ if k.startswith("HF_DDM_SPACE_")]:
        del os.environ[k]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def app(space_env):
    a = SpaceApp(limits=Limits(max_images=4, max_steps=12, max_guidance=10.0, max_prompt_chars=40, concurrency=1,
                               max_queue=4))
    a.registry.load_all()
    return a


def run(app, model="ddpm", sampler=None, steps=2, guidance=2.0, class_name=None, prompt=None, seed=0, n=1,
        animation="off", frame_every=0, progress=None):
    if sampler is None:
        sampler = app.default_sampler(app.registry.get(model)) if model in SPECS else AS_SAVED
    return app.generate(model, sampler, steps, guidance, class_name, prompt, seed, n, animation, frame_every,
                        progress=progress or NoProgress())


def images_of(gallery):
    return [torch.from_numpy(np.asarray(img).copy()) for img, _ in gallery]


# ------------------------------------------------------------------------------------------------
# Generation, every model kind
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, extra",
    [
        ("ddpm", {}),
        ("ldm_class", {"class_name": "trouser"}),
        ("ldm_text", {"prompt": "a photo of a bag"}),
        ("guided", {"class_name": CYCLE}),
        ("sde", {}),
    ],
)
def test_generate_every_model(app, model, extra):
    progress = NoProgress()
    gallery, gif, info = run(app, model, n=2, animation="x0-prediction", progress=progress, **extra)
    assert len(gallery) == 2
    img, caption = gallery[0]
    assert img.size[0] >= 128  # upscaled for display
    assert "seed 0" in caption and "seed 1" in gallery[1][1]
    if model == "ldm_class":
        assert caption.startswith("trouser")
    if model == "guided":  # one of each class, in turn
        assert caption.startswith("T-shirt/top") and gallery[1][1].startswith("trouser")
    if model == "ldm_text":
        assert caption.startswith("a photo of a bag")
    # Wall time and number of model evaluations reported with the result.
    assert "model evaluations" in info and " s** (wall time)" in info
    assert "untrained demo weights" in info
    # Progress went through every model evaluation up to done.
    fractions = [v for v, _ in progress.calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any(d and "model evaluation" in d for _, d in progress.calls)
    # The trajectory animation.
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames >= 2


@pytest.mark.parametrize(
    "model, sampler",
    [
        ("ddpm", "DDPM ancestral (VPScheduler)"),
        ("ddpm", "DDIM, eta=1 (VPScheduler)"),
        ("ddpm", "DPM-Solver++(2M) (diffusers)"),
        ("ddpm", "UniPC (diffusers)"),
        ("ddpm", "SDE: predictor-corrector (reverse diffusion + 1 Langevin)"),
        ("ldm_class", "ODE: multistep DPM-Solver++(3M) (hf_ddm)"),
        ("sde", AS_SAVED),
        ("sde", "SDE: Euler-Maruyama (reverse SDE)"),
        ("sde", "ODE: probability-flow Heun (2 NFE/step)"),
        ("sde", "ODE: multistep DPM-Solver++(2M) (hf_ddm)"),
    ],
)
def test_samplers_run(app, model, sampler):
    gallery, _, info = run(app, model, sampler=sampler, steps=2, class_name=CYCLE)
    assert len(gallery) == 1
    assert "model evaluations" in info and app.sampler_name(app.registry.get(model), sampler) in info


def test_sampler_catalogue_follows_the_process(app):
    vp = app.registry.get("ddpm").samplers
    for label in ("DDPM ancestral (VPScheduler)", "DDIM, eta=0 (VPScheduler)", "DPM-Solver++(2M) (diffusers)",
                  "UniPC (diffusers)", "ODE: probability-flow Heun (2 NFE/step)"):
        assert label in vp
    ve = app.registry.get("sde").samplers
    assert "SDE: predictor-corrector (reverse diffusion + 1 Langevin)" in ve
    assert "DDPM ancestral (VPScheduler)" not in ve and "UniPC (diffusers)" not in ve  # VE: no VP solvers


def test_reported_evaluations_count_heun_twice(app):
    _, _, info = run(app, "ddpm", sampler="ODE: probability-flow Heun (2 NFE/step)", steps=3)
    assert "**5 model evaluations**" in info  # 2 per step, the last step into clean data is Euler
    _, _, info = run(app, "ddpm", sampler="DDIM, eta=0 (VPScheduler)", steps=3)
    assert "**3 model evaluations**" in info


def test_seed_makes_images_reproducible_and_independent_of_batch(app):
    a, _, _ = run(app, "ddpm", sampler="DDPM ancestral (VPScheduler)", seed=7, n=2)
    b, _, _ = run(app, "ddpm", sampler="DDPM ancestral (VPScheduler)", seed=7, n=1)
    c, _, _ = run(app, "ddpm", sampler="DDPM ancestral (VPScheduler)", seed=8, n=1)
    ia, ib, ic = images_of(a), images_of(b), images_of(c)
    assert torch.equal(ia[0], ib[0])
    assert torch.equal(ia[1], ic[0])  # image k uses seed + k
    assert not torch.equal(ia[0], ia[1])


def test_animation_of_noisy_samples(app):
    _, gif, _ = run(app, "ldm_class", steps=4, animation="noisy sample x_t", frame_every=2, class_name=CYCLE)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 1 + 2 + 1  # x_T, steps 1 and 3, the last step
    _, gif, _ = run(app, "ddpm", animation="off")
    assert gif is None


def test_model_change_updates_the_controls(app):
    sampler, steps, classes, prompt, guidance, status = app.on_model_change("ldm_text")
    assert sampler["value"] in app.registry.get("ldm_text").samplers
    assert steps["value"] == min(app.limits.default_steps, app.limits.max_steps)
    assert classes["visible"] is False and prompt["visible"] is True and prompt["value"]
    assert "Untrained demo weights" in status
    sampler, steps, classes, prompt, guidance, status = app.on_model_change("guided")
    assert classes["visible"] is True and CYCLE in classes["choices"] and "trouser" in classes["choices"]
    assert prompt["visible"] is False
    _, _, _, _, guidance, _ = app.on_model_change("ddpm")
    assert guidance["interactive"] is False
    # A continuous-time model defaults to the reverse SDE with more steps (within the request limit).
    roomy = SpaceApp(registry=app.registry, limits=Limits())
    sampler, steps, *_ = roomy.on_model_change("sde")
    assert sampler["value"] == DEFAULT_SAMPLER[roomy.registry.get("sde").family]
    assert steps["value"] == min(100, roomy.limits.max_steps) > roomy.limits.default_steps
    assert app.on_model_change("sde")[1]["value"] == app.limits.max_steps  # capped by the request limit
    assert "Untrained demo weights" in app.banner()


@pytest.mark.parametrize("solver, steps", [("euler_maruyama", 100), ("multistep", None)])
def test_a_sub_vp_sde_model_starts_on_the_sampler_its_folder_saves(space_env, solver, steps):
    """A continuous sub-VP model opens on its saved sampler (its card's recommendation): a stochastic one with
    100 steps, the probability-flow DPM-Solver++(2M) with the usual default."""
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.sde import SDEScheduler
    from hf_ddm_space.registry import LoadedModel

    pipe = PixelDiffusionPipeline(build_pipeline("ddpm").unet, SDEScheduler(sde="subvp", solver=solver))
    model = LoadedModel(spec=SPECS["sde"], pipe=pipe, source="demo")
    roomy = SpaceApp(limits=Limits())
    assert model.family == "sde:subvp" and roomy.default_sampler(model) == AS_SAVED
    assert roomy.default_steps(model) == (steps or roomy.limits.default_steps)


# ------------------------------------------------------------------------------------------------
# Limits -> clear errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 13}, "Number of steps must be between 1 and 12"),
        ({"steps": 0}, "Number of steps must be between 1 and 12"),
        ({"steps": 2.5}, "Number of steps must be a whole number"),
        ({"n": 5}, "Number of images must be between 1 and 4"),
        ({"seed": -1}, "Seed must be between 0"),
        ({"seed": 1.5}, "Seed must be a whole number"),
        ({"steps": "abc"}, "Number of steps must be a whole number"),
        ({"guidance": 10.5}, "Guidance scale must be between 0 and 10"),
        ({"guidance": float("nan")}, "Guidance scale must be between"),
        ({"model": "nope"}, "Unknown model 'nope'"),
        ({"sampler": "UniPC (diffusers)", "model": "sde"}, "not available for Score SDE"),
        ({"model": "ldm_text", "prompt": "  "}, "enter a prompt"),
        ({"model": "ldm_text", "prompt": "a" * 41}, "the limit is 40"),
        ({"model": "ldm_class", "class_name": "spaceship"}, "Unknown class 'spaceship'"),
        ({"model": "ldm_class", "class_name": "10"}, "Unknown class '10'"),
        ({"animation": "movie"}, "Animation must be one of"),
    ],
)
def test_out_of_range_inputs_raise_gr_error(app, kwargs, message):
    with pytest.raises(gr.Error, match=message):
        run(app, **kwargs)


def test_class_by_index_is_accepted(app):
    gallery, _, _ = run(app, "ldm_class", class_name="3")
    assert gallery[0][1].startswith("dress")


def test_class_names_match_case_insensitively(app):
    """The Space README's API example sends "sneaker"; the shipped model's name is "Sneaker"."""
    gallery, _, _ = run(app, "ldm_class", class_name="  DRESS ")
    assert gallery[0][1].startswith("dress")
    with pytest.raises(gr.Error, match="Unknown class"):
        run(app, "ldm_class", class_name="dres")


def test_one_image_per_class_of_ten_in_one_run(space_env):
    assert Limits().max_images >= 10
    ten = SpaceApp(limits=Limits(max_queue=2))
    gallery, _, _ = run(ten, "ldm_class", class_name=CYCLE, n=10)
    assert len(gallery) == 10 and len({c.split(" ·")[0] for _, c in gallery}) == 10


def test_gallery_grows_with_its_rows(space_env):
    demo = build_demo(SpaceApp(), preload=False)
    gallery = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "gallery"][0]
    assert gallery.height in (None, "auto")  # a fixed height hid every row after the first


def test_status_shows_no_server_path(app):
    import dataclasses

    from hf_ddm_space.ui import public_source

    model = dataclasses.replace(app.registry.get("ddpm"), source="folder:/srv/space/models/ddpm")
    status = app.model_status(model)
    assert "/srv" not in status and "ddpm/" in status
    assert public_source("hub:someone/model@v1") == "someone/model@v1"


# ------------------------------------------------------------------------------------------------
# Failures stay inside one request
# ------------------------------------------------------------------------------------------------


def test_exception_inside_a_request_does_not_break_the_app(app, monkeypatch):
    model = app.registry.get("ddpm")
    real = type(model).pipeline_with

    class Exploding:
        def __init__(self, pipe):
            self.unet, self.vae = pipe.unet, None

        def __call__(self, **kwargs):
            raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(type(model), "pipeline_with", lambda self, scheduler: Exploding(real(self, scheduler)))
    with pytest.raises(gr.Error, match="Generation failed \\(RuntimeError: simulated out of memory\\)"):
        run(app, "ddpm")
    monkeypatch.undo()
    gallery, _, _ = run(app, "ddpm")  # the next request works
    assert len(gallery) == 1


def test_failure_in_a_step_callback_is_contained(app, monkeypatch):
    from hf_ddm_space import ui

    def bad_strip(*a, **k):
        raise RuntimeError("bad frame")

    monkeypatch.setattr(ui, "frame_strip", bad_strip)
    with pytest.raises(gr.Error, match="Generation failed \\(RuntimeError: bad frame\\)"):
        run(app, "ddpm", animation="noisy sample x_t")
    monkeypatch.undo()
    assert len(run(app, "ddpm", animation="noisy sample x_t")[0]) == 1


def test_a_model_that_fails_to_load_only_fails_its_requests(space_env, tmp_path, monkeypatch):
    a = SpaceApp(registry=Registry(), limits=Limits())
    (tmp_path / "not-a-model").mkdir()
    monkeypatch.setenv("HF_DDM_MODEL_GUIDED", str(tmp_path / "not-a-model"))  # a folder, but no pipeline in it
    with pytest.raises(gr.Error, match="could not be loaded: ValueError: .*no model_index.json"):
        a.generate("guided", AS_SAVED, 2, 1.0, None, None, 0, 1, "off", 0, progress=NoProgress())
    g, _, _ = a.generate("ddpm", AS_SAVED, 2, 1.0, None, None, 0, 1, "off", 0, progress=NoProgress())
    assert len(g) == 1


# ------------------------------------------------------------------------------------------------
# The registry: drop-in folders, env overrides
# ------------------------------------------------------------------------------------------------


def test_a_training_script_folder_dropped_into_models_is_used(space_env, tmp_path, monkeypatch):
    """What train/train_ldm.py saves: the hf_ddm pipeline's save_pretrained folder, class names in its config."""
    from hf_ddm.pipelines import LatentDiffusionPipeline

    models = tmp_path / "models"
    demo = build_pipeline("ldm_class")
    names = [f"c{i}" for i in range(10)]
    LatentDiffusionPipeline(unet=demo.unet, vae=demo.vae, scheduler=demo.scheduler,
                            class_names=names).save_pretrained(models / "ldm_class")
    index = json.loads((models / "ldm_class" / "model_index.json").read_text())
    assert index["_class_name"] == ["latent_pipeline", "LatentDiffusionPipeline"] and index["class_names"] == names
    assert not (models / "ldm_class" / "class_names.json").exists()
    monkeypatch.setenv("HF_DDM_SPACE_MODELS_DIR", str(models))
    a = SpaceApp(registry=Registry(), limits=Limits())
    m = a.registry.get("ldm_class")
    assert type(m.pipe) is LatentDiffusionPipeline  # the installed class, not the folder's copy of its code
    assert m.source == f"folder:{models / 'ldm_class'}" and m.trained
    assert m.class_names == names and m.pipe.config.class_names == names
    assert m.pipeline_with(m.pipe.scheduler).config.class_names == names
    _, _, classes, _, _, _ = a.on_model_change("ldm_class")
    assert "c3" in classes["choices"] and "trouser" not in classes["choices"]
    assert "trained checkpoint" in a.model_status(m) and "Untrained" not in a.model_status(m)
    g, _, info = a.generate("ldm_class", AS_SAVED, 2, 3.0, "c3", None, 0, 1, "off", 0, progress=NoProgress())
    assert g[0][1].startswith("c3") and "untrained" not in info
    assert resolve("ddpm") == (None, None, "demo")  # the other models still fall back


def test_demo_models_carry_their_class_names_in_the_config(app):
    from hf_ddm_space.demo_models import DEMO_VERSION
    from hf_ddm_space.registry import FASHION_MNIST_CLASSES, demo_cache_dir

    for name in ("ldm_class", "ldm_text", "guided"):
        m = app.registry.get(name)
        assert m.pipe.config.class_names == FASHION_MNIST_CLASSES and m.class_names == FASHION_MNIST_CLASSES
        folder = os.path.join(demo_cache_dir(), f"{name}-v{DEMO_VERSION}")
        with open(os.path.join(folder, "model_index.json")) as f:
            assert json.load(f)["class_names"] == FASHION_MNIST_CLASSES
        assert sorted(os.listdir(folder)) == sorted(
            ["model_index.json", "hf_ddm_space_demo.json", type(m.pipe).__module__.rsplit(".", 1)[-1] + ".py"]
            + [k for k, v in m.pipe.components.items() if v is not None])  # no side files


def test_folders_that_are_not_hf_ddm_pipelines_are_refused(tmp_path):
    from diffusers import DDPMPipeline

    pixel = build_pipeline("ddpm")
    DDPMPipeline(unet=pixel.unet, scheduler=pixel.scheduler).save_pretrained(tmp_path / "diffusers_ddpm")
    with pytest.raises(ValueError, match="names pipeline class 'DDPMPipeline', which is not an hf_ddm pipeline"):
        load_pipeline(str(tmp_path / "diffusers_ddpm"))
    # Components without model_index.json (no pipeline was saved).
    pixel.unet.save_pretrained(tmp_path / "loose" / "unet")
    pixel.scheduler.save_pretrained(tmp_path / "loose" / "scheduler")
    with pytest.raises(ValueError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "loose"))


HUB_LOAD = """
import json, os, sys
sys.path.append(sys.argv[1])
from hf_ddm_space.registry import Registry

out = []
for revision in ("", "v1"):
    os.environ["HF_DDM_MODEL_LDM_TEXT_REVISION"] = revision
    m = Registry().get("ldm_text")
    out.append({"source": m.source, "class": type(m.pipe).__module__ + "." + type(m.pipe).__name__,
                "names": m.class_names, "template": m.prompt_template, "trained": m.trained,
                "images": len(m.pipeline_with(m.pipe.scheduler)(prompt="a drawing of a cat", num_inference_steps=1,
                                                                output_type="np").images)})
print(json.dumps(out))
"""


def test_env_var_names_a_hub_repo_resolved_from_the_hf_cache_offline(tmp_path):
    """``HF_DDM_MODEL_<NAME>=org/name`` loads through the standard HF cache (models--org--name/snapshots/<commit>,
    refs/<name>) with HF_HUB_OFFLINE=1; ``_REVISION`` picks a ref. A fresh process: nothing of hf_ddm imported
    beforehand, and the Hub settings are read at import."""
    repo = tmp_path / "hf" / "hub" / "models--someone--ldm-text"
    for ref, commit, names in (("main", "a" * 40, ["cat", "dog"]), ("v1", "b" * 40, ["ant", "bee", "fly"])):
        pipe = build_pipeline("ldm_text")
        pipe.register_class_names(names)
        snapshot = repo / "snapshots" / commit
        pipe.save_pretrained(snapshot)
        (snapshot / "README.md").write_text("# card\n\n- prompt template: `a drawing of a {}`\n")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_DDM_", "HF_HUB_", "HF_HOME"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               HF_DDM_MODEL_LDM_TEXT="someone/ldm-text", HF_DDM_SPACE_MODELS_DIR=str(tmp_path / "no-models"),
               HF_DDM_SPACE_DEMO_CACHE=str(tmp_path / "demo-cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", HUB_LOAD, SPACE_DIR], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    main, v1 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert main["source"] == "hub:someone/ldm-text" and main["trained"]
    assert main["class"] == "hf_ddm.pipelines.latent_pipeline.LatentDiffusionPipeline"
    assert main["names"] == ["cat", "dog"] and main["template"] == "a drawing of a {}" and main["images"] == 1
    assert v1["source"] == "hub:someone/ldm-text@v1" and v1["names"] == ["ant", "bee", "fly"]
    assert not (tmp_path / "demo-cache").exists()  # no demo fallback was built


def test_shipped_checkpoints_load_and_sample():
    """Whatever is in space/models/<name>/ now (nothing until trained checkpoints are added) loads and samples."""
    shipped = [n for n in SPECS if os.path.isdir(os.path.join(registry_mod.DEFAULT_MODELS_DIR, n))]
    for name in shipped:
        pipe = load_pipeline(os.path.join(registry_mod.DEFAULT_MODELS_DIR, name))
        kwargs = {"class_labels": [0]} if getattr(pipe.unet.config, "num_class_embeds", None) or hasattr(
            pipe, "classifier") else {}
        if getattr(pipe, "text_encoder", None) is not None:
            kwargs = {"prompt": "a photo of a sneaker"}
        out = pipe(batch_size=1, num_inference_steps=2, output_type="np", **kwargs).images
        assert out.shape[0] == 1


def test_guidance_slider_starts_at_the_folders_default(app, tmp_path):
    """The slider follows a folder's default_guidance_scale (its card's recommendation); 3 without one."""
    model = app.registry.get("ldm_class")
    assert app.default_guidance(model) == 3.0
    model.pipe.register_to_config(default_guidance_scale=4.5)
    try:
        assert app.default_guidance(model) == 4.5
        assert app.on_model_change("ldm_class")[4]["value"] == 4.5
    finally:
        model.pipe.register_to_config(default_guidance_scale=None)


def test_default_vp_sampler_holds_up_at_few_steps_on_the_shipped_ldm():
    """The Space's default for discrete-VP models (DPM-Solver++(2M), steps uniform in train time) at 6 steps
    lands near the 100-step solution on the shipped class LDM with CFG 3; the log-SNR grid lands 6x further."""
    from hf_ddm.catalogue import UNIFORM_2M, catalogue

    assert DEFAULT_SAMPLER["vp"] == UNIFORM_2M
    pipe = load_pipeline(os.path.join(registry_mod.DEFAULT_MODELS_DIR, "ldm_class")).to(dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    entries = catalogue(pipe.scheduler)

    def sample(label, steps):
        pipe.scheduler = entries[label].make()
        return pipe(class_labels=[0, 1, 2, 3], guidance_scale=3.0, num_inference_steps=steps, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    ref = sample(UNIFORM_2M, 100)
    uniform = (sample(UNIFORM_2M, 6) - ref).abs().mean()
    log_snr = (sample("ODE: multistep DPM-Solver++(2M) (hf_ddm)", 6) - ref).abs().mean()
    assert uniform < 0.05 and log_snr > 3 * uniform, (uniform, log_snr)


# ------------------------------------------------------------------------------------------------
# The launched app over HTTP
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(app):
    demo = build_demo(app)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    try:
        yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_queue_limits_are_configured(served, app):
    demo, _ = served
    assert demo._queue.max_size == app.limits.max_queue
    assert demo._queue.default_concurrency_limit == app.limits.concurrency


def test_http_generate(served):
    _, client = served
    gallery, gif, info = client.predict("guided", "DDIM, eta=0 (VPScheduler)", 2, 2.0, "sneaker", "", 3, 2,
                                        "x0-prediction", 0, api_name="/generate")
    assert len(gallery) == 2 and os.path.exists(gallery[0]["image"])
    assert gallery[0]["caption"] == "sneaker · seed 3"
    assert gif.endswith(".gif") and os.path.exists(gif)
    assert "model evaluations" in info


def test_http_errors_are_reported_and_the_app_survives(served, app, monkeypatch):
    from gradio_client.exceptions import AppError

    _, client = served
    with pytest.raises(AppError, match="greater than maximum|between 1 and 12"):
        client.predict("ddpm", AS_SAVED, 1000, 1.0, None, "", 0, 1, "off", 0, api_name="/generate")
    with pytest.raises(AppError, match="not available for"):
        client.predict("sde", "UniPC (diffusers)", 2, 1.0, None, "", 0, 1, "off", 0, api_name="/generate")
    # An exception deep inside a request: that request fails with a message, the server lives on.
    model = app.registry.get("ddpm")
    real = model.samplers[AS_SAVED]

    def explode():
        raise RuntimeError("scheduler exploded")

    monkeypatch.setitem(model.samplers, AS_SAVED, type(real)(AS_SAVED, explode))
    with pytest.raises(AppError, match="Generation failed \\(RuntimeError: scheduler exploded\\)"):
        client.predict("ddpm", AS_SAVED, 2, 1.0, None, "", 0, 1, "off", 0, api_name="/generate")
    monkeypatch.undo()
    gallery, _, _ = client.predict("ddpm", AS_SAVED, 2, 1.0, None, "", 0, 1, "off", 0, api_name="/generate")
    assert len(gallery) == 1


@pytest.mark.parametrize("field, value, message", [
    ("seed", 1.5, "Seed must be a whole number"),  # Gradio's Number(precision=0) rounded it to 2 silently
    ("steps", "abc", "Number of steps must be a whole number"),  # was Gradio's generic upstream error
    ("num_images", "two", "Number of images must be a whole number"),
    ("guidance", "abc", "Guidance scale must be a number"),
])
def test_http_values_reach_the_apps_checks_by_name(served, field, value, message):
    from gradio_client.exceptions import AppError

    _, client = served
    args = dict(model="ddpm", sampler=AS_SAVED, steps=2, guidance=1.0, class_name=None, prompt="", seed=0,
                num_images=1, animation="off", frame_every=0)
    args[field] = value
    with pytest.raises(AppError, match=message):
        client.predict(*args.values(), api_name="/generate")


def test_deploy_assembles_a_self_contained_space(tmp_path):
    """The assembled Space folder imports the vendored hf_ddm (a Space cannot pip-install this repo)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_ddm_space_deploy", os.path.join(SPACE_DIR, "deploy.py"))
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    out = tmp_path / "space"
    deploy.assemble(str(out))
    for name in ("app.py", "README.md", "requirements.txt", "hf_ddm_space/ui.py", "hf_ddm/__init__.py",
                 "hf_ddm/pipelines/__init__.py", "hf_ddm/pipelines/latent_pipeline.py", "hf_ddm/schedulers/sde.py",
                 "hf_ddm/models/unet.py"):
        assert (out / name).exists(), name
    assert not list(out.rglob("__pycache__"))
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "screenshot.png" in readme and (out / "screenshot.png").exists()


def test_cancelled_request_stops_its_work_between_steps(served, app, monkeypatch):
    """A cancelled HTTP request must stop sampling, not just free its slot: four submit-and-cancel cycles
    left 2, 4, 6, 6 generations running before. The U-Net is held inside step 1 until the cancellation
    has reached the request, then released: the request stops after that step instead of running all 12."""
    import threading
    import time

    _, client = served
    unet = app.registry.get("ddpm").pipe.unet
    real_forward, calls = unet.forward, []
    started, release = threading.Event(), threading.Event()

    def held_forward(*a, **kw):
        calls.append(1)
        started.set()
        release.wait(60)
        return real_forward(*a, **kw)

    monkeypatch.setattr(unet, "forward", held_forward)

    def wait_for(condition, what):  # a deadline against hangs, not a timing assertion
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    for cycle in range(4):
        calls.clear()
        started.clear()
        release.clear()
        job = client.submit("ddpm", AS_SAVED, 12, 1.0, None, "", cycle, 1, "off", 0, api_name="/generate")
        assert started.wait(60)
        job.cancel()
        wait_for(lambda: app.working_cancelled == 1, "the cancellation to reach the generation")
        release.set()
        wait_for(lambda: app.working == 0, "the cancelled generation to stop")
        assert len(calls) == 1, f"cycle {cycle}: {len(calls)} of 12 steps ran after the cancellation"
    monkeypatch.undo()
    gallery, _, _ = client.predict("ddpm", AS_SAVED, 2, 1.0, None, "", 0, 1, "off", 0, api_name="/generate")
    assert len(gallery) == 1  # the app serves the next request


# ------------------------------------------------------------------------------------------------
# Compare mode: one request, 2-4 samplers, one grid each
# ------------------------------------------------------------------------------------------------

DDIM0 = "DDIM, eta=0 (VPScheduler)"
HEUN = "ODE: probability-flow Heun (2 NFE/step)"
ANCESTRAL = "DDPM ancestral (VPScheduler)"


def compare(app, model="ddpm", samplers=(DDIM0, HEUN), steps=3, guidance=2.0, class_name=None, prompt=None, seed=0,
            n=2, progress=None):
    return app.compare(model, list(samplers) if isinstance(samplers, tuple) else samplers, steps, guidance,
                       class_name, prompt, seed, n, progress=progress or NoProgress())


@pytest.mark.parametrize("samplers", [(DDIM0, HEUN), (DDIM0, HEUN, ANCESTRAL, "UniPC (diffusers)")])
def test_compare_gives_one_captioned_grid_per_sampler(app, samplers):
    progress = NoProgress()
    gallery, info = compare(app, samplers=samplers, n=3, progress=progress)
    assert [c.split(" · ")[0] for _, c in gallery] == list(samplers)  # one grid per sampler, in the order chosen
    nfe = {DDIM0: 3, HEUN: 5, ANCESTRAL: 3, "UniPC (diffusers)": 3}  # 3 steps; Heun: 2 per step, the last Euler
    for (grid, caption), label in zip(gallery, samplers):
        assert caption.startswith(f"{label} · {nfe[label]} NFE · ") and caption.endswith(" s")
        assert grid.size == (2 * 130 + 2, 2 * 130 + 2)  # 3 images of 128 px on a 2x2 grid, 2 px apart
        assert f"| {label} | " in info and f"| {nfe[label]} | " in info
    assert info.count("\n| ") == len(samplers) + 1  # table header + one row per sampler
    assert "seed 0…2" in info and "untrained demo weights" in info
    fractions = [v for v, _ in progress.calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any(d and d.startswith(f"sampler {len(samplers)}/{len(samplers)} ") for _, d in progress.calls)


def test_a_folders_guidance_interval_is_kept_and_shown(app):
    """A folder that guides in an interval: every sampler's pipeline keeps it, the request line says it, and the
    images are not those of guidance at every level."""
    model = app.registry.get("ldm_class")
    plain, _, _ = run(app, "ldm_class", class_name="trouser")
    model.pipe.register_default_guidance_interval((0, 5))
    try:
        assert model.pipeline_with(model.pipe.scheduler).config.default_guidance_interval == [0, 5]
        _, info = compare(app, "ldm_class", samplers=(DDIM0, ANCESTRAL), class_name="trouser", n=1)
        limited, _, _ = run(app, "ldm_class", class_name="trouser")
    finally:
        model.pipe.register_default_guidance_interval(None)
    assert "guidance scale 2 at σ ≤ 5" in info and "(those at σ ≤ 5 a batched call" in info
    assert not torch.equal(images_of(plain)[0], images_of(limited)[0])


def tile(grid, k, cols=2, size=128, pad=2):
    x, y = pad + (k % cols) * (size + pad), pad + (k // cols) * (size + pad)
    return torch.from_numpy(np.asarray(grid.crop((x, y, x + size, y + size))).copy())


def test_compare_runs_the_same_request_as_generate(app):
    """Each grid's tile k is what /generate shows as image k for that sampler, seed, class and guidance."""
    gallery, info = compare(app, "ldm_class", samplers=(DDIM0, ANCESTRAL), class_name="trouser", seed=5, n=2)
    assert "classes: trouser" in info and "guidance scale 2" in info
    for (grid, _), sampler in zip(gallery, (DDIM0, ANCESTRAL)):
        alone, _, _ = run(app, "ldm_class", sampler=sampler, steps=3, class_name="trouser", seed=5, n=2)
        for k, (img, _) in enumerate(alone):
            assert torch.equal(tile(grid, k), torch.from_numpy(np.asarray(img.convert("RGB")).copy()))
    # Different samplers from the same noise: different images.
    assert not torch.equal(tile(gallery[0][0], 0), tile(gallery[1][0], 0))


def test_compare_is_reproducible_for_a_deterministic_sampler(app):
    first, _ = compare(app, samplers=(DDIM0, HEUN), seed=11)
    again, _ = compare(app, samplers=(HEUN, DDIM0), seed=11)
    other, _ = compare(app, samplers=(DDIM0, HEUN), seed=12)
    as_tensor = lambda g: torch.from_numpy(np.asarray(g).copy())  # noqa: E731
    assert torch.equal(as_tensor(first[0][0]), as_tensor(again[1][0]))  # DDIM, eta=0 twice: identical
    assert torch.equal(as_tensor(first[1][0]), as_tensor(again[0][0]))
    assert not torch.equal(as_tensor(first[0][0]), as_tensor(other[0][0]))


def test_compare_text_model_uses_the_prompt(app):
    gallery, info = compare(app, "ldm_text", samplers=app.default_compare(app.registry.get("ldm_text")),
                            prompt="a photo of a bag", steps=2, n=1)
    assert len(gallery) == 2 and "prompt: a photo of a bag" in info


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samplers": []}, "Samplers to compare: choose 2 to 4 samplers, got none"),
        ({"samplers": None}, "Samplers to compare: choose 2 to 4 samplers, got none"),
        ({"samplers": [DDIM0]}, "Samplers to compare: choose 2 to 4 samplers, got 1"),
        ({"samplers": DDIM0}, "Samplers to compare: choose 2 to 4 samplers, got 1"),
        ({"samplers": [DDIM0, HEUN, ANCESTRAL, "UniPC (diffusers)", AS_SAVED]},
         "Samplers to compare: choose 2 to 4 samplers, got 5"),
        ({"samplers": [DDIM0, "warp drive"]}, "Samplers to compare: unknown sampler 'warp drive' for Pixel DDPM"),
        ({"samplers": [DDIM0, "UniPC (diffusers)"], "model": "sde"},
         "Samplers to compare: unknown sampler 'DDIM, eta=0 \\(VPScheduler\\)' for Score SDE"),
        ({"samplers": [DDIM0, DDIM0]}, "Samplers to compare: 'DDIM, eta=0 \\(VPScheduler\\)' is chosen twice"),
        ({"samplers": 3}, "Samplers to compare must be a list"),
        ({"steps": 13}, "Number of steps must be between 1 and 12"),
        ({"n": 5}, "Number of images must be between 1 and 4"),
        ({"model": "ldm_class", "class_name": "spaceship"}, "Unknown class 'spaceship'"),
        ({"model": "ldm_text", "prompt": ""}, "enter a prompt"),
    ],
)
def test_compare_bad_inputs_raise_gr_error(app, kwargs, message):
    with pytest.raises(gr.Error, match=message):
        compare(app, **kwargs)
    assert app.working == 0


def test_compare_limit_is_configurable(app):
    two = SpaceApp(registry=app.registry, limits=Limits(max_compare=2))
    with pytest.raises(gr.Error, match="choose 2 to 2 samplers, got 3"):
        compare(two, samplers=(DDIM0, HEUN, ANCESTRAL))
    assert Limits().max_compare == 4


def test_compare_choices_follow_the_model(app):
    for name in SPECS:
        update = app.compare_choices(name)
        model = app.registry.get(name)
        assert [value for _text, value in update["choices"]] == list(model.samplers)
        assert len(update["value"]) == 2 and set(update["value"]) <= set(model.samplers)
        assert update["value"][0] == app.default_sampler(model)


def test_a_failing_sampler_fails_the_comparison_cleanly(app, monkeypatch):
    model = app.registry.get("ddpm")
    real = model.samplers[HEUN]

    def explode():
        raise RuntimeError("scheduler exploded")

    monkeypatch.setitem(model.samplers, HEUN, type(real)(HEUN, explode))
    with pytest.raises(gr.Error, match="Generation failed \\(RuntimeError: scheduler exploded\\)"):
        compare(app, samplers=(DDIM0, HEUN))
    assert app.working == 0
    monkeypatch.undo()
    assert len(compare(app)[0]) == 2


def test_http_compare(served):
    _, client = served
    gallery, info = client.predict("guided", [DDIM0, HEUN], 2, 2.0, "sneaker", "", 3, 2, api_name="/compare")
    assert len(gallery) == 2 and all(os.path.exists(item["image"]) for item in gallery)
    assert gallery[0]["caption"].startswith(f"{DDIM0} · 2 NFE · ")
    assert gallery[1]["caption"].startswith(f"{HEUN} · 3 NFE · ")
    assert "classes: sneaker" in info and "| model evaluations (NFE) |" in info
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Samplers to compare: choose 2 to 4 samplers, got 1"):
        client.predict("ddpm", [DDIM0], 2, 1.0, None, "", 0, 1, api_name="/compare")


def test_compare_shares_the_concurrency_group_of_generate(served):
    demo, _ = served
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("generate", "compare")}
    assert fns["generate"].concurrency_id == fns["compare"].concurrency_id


def test_cancelled_compare_stops_its_work_between_steps(served, app, monkeypatch):
    """Cancelling a comparison stops it inside the first sampler's first step: the later samplers never run."""
    import threading
    import time

    _, client = served
    unet = app.registry.get("ddpm").pipe.unet
    real_forward, calls = unet.forward, []
    started, release = threading.Event(), threading.Event()

    def held_forward(*a, **kw):
        calls.append(1)
        started.set()
        release.wait(60)
        return real_forward(*a, **kw)

    monkeypatch.setattr(unet, "forward", held_forward)

    def wait_for(condition, what):
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    job = client.submit("ddpm", [DDIM0, HEUN, ANCESTRAL], 12, 1.0, None, "", 0, 1, api_name="/compare")
    assert started.wait(60)
    job.cancel()
    wait_for(lambda: app.working_cancelled == 1, "the cancellation to reach the comparison")
    release.set()
    wait_for(lambda: app.working == 0, "the cancelled comparison to stop")
    assert len(calls) == 1, f"{len(calls)} model evaluations ran after the cancellation (of 12 + 23 + 12)"
    monkeypatch.undo()
    gallery, _ = client.predict("ddpm", [DDIM0, HEUN], 2, 1.0, None, "", 0, 1, api_name="/compare")
    assert len(gallery) == 2


@pytest.mark.parametrize("name", list(SPECS))
def test_default_comparison_is_two_algorithms_and_names_the_saved_one(app, name):
    """Two grids of one solver give near-identical images: the preselected pair are two algorithms. The menu
    shows "as saved" with the solver and grid it is; its value stays the catalogue key the API takes."""
    model = app.registry.get(name)
    picks = app.default_compare(model)
    assert len(picks) == 2 and solver_of(model.samplers[picks[0]].make()) != solver_of(model.samplers[picks[1]].make())
    shown = {value: text for text, value in app.sampler_choices(model)}
    assert list(shown) == list(model.samplers)
    assert shown[AS_SAVED].startswith("as saved: ") and len(shown[AS_SAVED]) > len("as saved: ") + 5


def test_a_folder_with_optimized_steps_is_compared_as_saved_and_says_so(app):
    import dataclasses

    from hf_ddm.catalogue import catalogue, schedule_config
    from hf_ddm.schedulers.sde import SDEScheduler

    model = app.registry.get("ddpm")
    saved = SDEScheduler.from_config(schedule_config(model.pipe.scheduler.config), solver="multistep",
                                     time_grid="uniform", denoise_final=False,
                                     optimized_timesteps={5: [999, 700, 400, 150, 30]})
    optimized = dataclasses.replace(model, pipe=model.pipeline_with(saved), samplers=catalogue(saved))
    assert app.default_compare(optimized) == [app.default_sampler(optimized), AS_SAVED]
    assert app.sampler_name(optimized, AS_SAVED).endswith("optimized steps for N = 5")
    scheduler = optimized.samplers[AS_SAVED].make()
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [999, 700, 400, 150, 30]

