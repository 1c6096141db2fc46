"""Portable saves (``save_pretrained(dir, portable=True)``): each hf_ddm component's subfolder and the root
carry the hf_ddm code they need, so the folder loads with ``DiffusionPipeline.from_pretrained(dir,
trust_remote_code=True)`` where hf_ddm is not installed, while the installed classes keep loading the
installed code.

"Where hf_ddm is not installed" is a real virtual environment: ``python -m venv --without-pip`` whose
site-packages holds a symlink to every entry of this interpreter's site-packages *except* hf_ddm's
install records (its editable ``.pth``, the finder module that ``.pth`` installs, its dist-info). That is
what a ``pip install torch diffusers transformers`` environment without hf_ddm looks like, at the cost of
a few hundred symlinks instead of gigabytes of copies. ``--system-site-packages`` would not do: the
editable install's ``.pth`` lives there and would put hf_ddm back; a meta-path hook raising ImportError
would test a pretend absence. The child runs with ``-I`` (no PYTHONPATH, no cwd or script folder on
sys.path, no user site) from a temporary folder, and asserts that ``hf_ddm`` has no import spec, no
distribution metadata, and is still absent from ``sys.modules`` after loading and generating.
"""

import ast
import json
import os
import site
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from hf_ddm.models import VAE, NoisyClassifier, UNet
from hf_ddm.pipelines import ClassifierGuidedPipeline, LatentDiffusionPipeline, PixelDiffusionPipeline
from hf_ddm.portable import INDEX_KEY, PortableSaveError, _rewrite, export, flat_names
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.schedulers.vp import VPScheduler
from hf_ddm.text import build_text_encoder, build_tokenizer

PROMPTS = ["a photo of a sneaker", "a photo of a bag", "a photo of a shirt"]


def tiny_unet(**kw):
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
               attention_levels=(1,), norm_num_groups=8, attention_head_dim=8)
    cfg.update(kw)
    torch.manual_seed(0)
    return UNet(**cfg)


def tiny_vae(channels=3, latent=4):
    torch.manual_seed(1)
    return VAE(in_channels=channels, out_channels=channels, latent_channels=latent, block_out_channels=(8, 16),
               layers_per_block=1, norm_num_groups=4)


def _pixel_vp():
    return PixelDiffusionPipeline(tiny_unet(num_class_embeds=3), VPScheduler(num_train_timesteps=50)), \
        dict(class_labels=[0, 2], guidance_scale=2.0)


def _pixel_sde():
    return PixelDiffusionPipeline(tiny_unet(), SDEScheduler(sde="vp", prediction_type="epsilon")), dict(batch_size=2)


def _latent_class():
    unet = tiny_unet(sample_size=4, in_channels=2, out_channels=2, num_class_embeds=3)
    pipe = LatentDiffusionPipeline(unet=unet, vae=tiny_vae(1, 2), scheduler=VPScheduler(num_train_timesteps=50),
                                   class_names=["a", "b", "c"])
    return pipe, dict(class_labels=["b", "c"], guidance_scale=2.0)


def _latent_text():
    tok = build_tokenizer(PROMPTS, max_length=8)
    torch.manual_seed(2)
    enc = build_text_encoder(tok, hidden_size=32, layers=1, heads=2)
    unet = tiny_unet(sample_size=4, in_channels=4, out_channels=4, cross_attention_dim=32)
    pipe = LatentDiffusionPipeline(unet=unet, vae=tiny_vae(), scheduler=VPScheduler(num_train_timesteps=50),
                                   text_encoder=enc, tokenizer=tok)
    return pipe, dict(prompt=PROMPTS[:2], guidance_scale=3.0)


def _guided():
    torch.manual_seed(3)
    clf = NoisyClassifier(in_channels=3, num_classes=3, block_out_channels=(16,), layers_per_block=1,
                          norm_num_groups=8, attention_levels=(), attention_head_dim=8)
    pipe = ClassifierGuidedPipeline(unet=tiny_unet(), classifier=clf, scheduler=VPScheduler(num_train_timesteps=50))
    return pipe, dict(class_labels=[1, 2], guidance_scale=2.0)


KINDS = {"pixel_vp": _pixel_vp, "pixel_sde": _pixel_sde, "latent_class": _latent_class,
         "latent_text": _latent_text, "guided": _guided}
STEPS = 3


def _run(pipe, kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="np", **kw).images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one thread, as the child process runs: a convolution summed over another split of
    threads rounds differently, and the comparisons below are exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    """{kind: (folder, original pipeline class, call kwargs, images of the original pipeline)}."""
    root = tmp_path_factory.mktemp("portable")
    out = {}
    expected = {name: make() for name, make in KINDS.items()}
    expected = {name: (pipe, kw, _run(pipe, kw)) for name, (pipe, kw) in expected.items()}
    for name, (pipe, kw, images) in expected.items():
        folder = str(root / name)
        pipe.save_pretrained(folder, portable=True)
        np.save(os.path.join(folder, "expected_images.npy"), images)
        out[name] = (folder, type(pipe), kw, images)
    return out


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    """{kind: folder}: each kind saved ``portable=False`` (no hf_ddm code in it), then made portable by
    ``hf_ddm.portable.export``, the way a shipped folder is published."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, (folder, cls, _kw, _images) in saved.items():
        plain, copy = str(root / f"{name}_plain"), str(root / f"{name}_exported")
        cls.from_pretrained(folder).save_pretrained(plain, portable=False)
        np.save(os.path.join(plain, "expected_images.npy"), np.load(os.path.join(folder, "expected_images.npy")))
        export(plain, copy)
        out[name] = copy
    return out


def _imports(path):
    """Absolute module names a file imports, and the relative ``from .x`` names."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            absolute.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            (relative if node.level else absolute).add(node.module)
    return absolute, relative


def test_folder_layout(saved):
    folder = saved["latent_text"][0]
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == ["latent_pipeline", "LatentDiffusionPipeline"]
    assert index["unet"] == ["hf_ddm_unet", "UNet"]
    assert index["vae"] == ["hf_ddm_vae", "VAE"]
    assert index["scheduler"] == ["hf_ddm_vp", "VPScheduler"]
    # transformers components are left as they are.
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][0] == "transformers"
    assert index[INDEX_KEY] == {"unet": "hf_ddm.models.unet", "vae": "hf_ddm.models.vae",
                                "scheduler": "hf_ddm.schedulers.vp"}
    # The bundles follow the import graph: the U-Net needs its layers, the scheduler its base class and the
    # noise processes, the root pipeline the loop, guidance, text helpers and, through guidance, the
    # processes (transitively); nothing that nothing imports (training, mixture, likelihood, __init__s).
    files = lambda sub: {f for f in os.listdir(os.path.join(folder, sub)) if f.endswith(".py")}  # noqa
    assert {"hf_ddm_unet.py", "hf_ddm_layers.py"} <= files("unet")
    assert {"hf_ddm_vp.py", "hf_ddm_base.py", "hf_ddm_processes.py"} <= files("scheduler")
    assert {"latent_pipeline.py", "hf_ddm_pipeline_utils.py", "hf_ddm_guidance.py", "hf_ddm_text.py",
            "hf_ddm_processes.py"} <= files(".")
    unwanted = {f"hf_ddm_{m}.py" for m in ("training", "loop", "mixture", "likelihood", "init", "models",
                                            "schedulers", "portable")}
    assert not unwanted & (files("unet") | files("scheduler") | files("vae") | files("."))
    assert not os.path.exists(os.path.join(folder, "text_encoder", "transformers.py"))
    guided = json.load(open(os.path.join(saved["guided"][0], "model_index.json")))
    assert guided["classifier"] == ["hf_ddm_classifier", "NoisyClassifier"]
    sde = json.load(open(os.path.join(saved["pixel_sde"][0], "model_index.json")))
    assert sde["scheduler"] == ["hf_ddm_sde", "SDEScheduler"]
    # No bundled file imports hf_ddm; each relative import names a file of its own folder.
    for name, (path, *_rest) in saved.items():
        for sub, _, names in os.walk(path):
            for f in names:
                if f.endswith(".py"):
                    absolute, relative = _imports(os.path.join(sub, f))
                    assert not {m for m in absolute if m == "hf_ddm" or m.startswith("hf_ddm.")}, (name, f)
                    assert all(os.path.isfile(os.path.join(sub, r + ".py")) for r in relative), (name, f)


@pytest.mark.parametrize("name", list(KINDS))
def test_installed_class_loads_installed_code(saved, name):
    folder, cls, kw, expected = saved[name]
    pipe = cls.from_pretrained(folder)
    assert type(pipe) is cls
    for component in json.load(open(os.path.join(folder, "model_index.json")))[INDEX_KEY]:
        assert type(getattr(pipe, component)).__module__.startswith("hf_ddm."), component
    np.testing.assert_array_equal(_run(pipe, kw), expected)
    # A non-portable save of what was loaded names the installed modules again.
    pipe.save_pretrained(os.path.join(folder + "_resaved"), portable=False)
    index = json.load(open(os.path.join(folder + "_resaved", "model_index.json")))
    assert index["unet"] == ["hf_ddm.models.unet", "UNet"] and INDEX_KEY not in index


def test_trust_remote_code_with_hf_ddm_installed(saved, tmp_path):
    folder, cls, kw, expected = saved["latent_class"]
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__name__ == cls.__name__ and type(pipe).__module__.startswith("diffusers_modules.")
    assert type(pipe.unet).__module__.startswith("diffusers_modules.")
    np.testing.assert_array_equal(_run(pipe, kw), expected)
    # Saving portable again needs the installed classes, and says so.
    with pytest.raises(PortableSaveError, match="installed class"):
        pipe.save_pretrained(tmp_path / "again", portable=True)


CHILD = textwrap.dedent(
    r'''
    import importlib.metadata, importlib.util, json, os, sys
    assert importlib.util.find_spec("hf_ddm") is None, "hf_ddm is importable in the child"
    try:
        importlib.metadata.distribution("hf_ddm")
        raise AssertionError("hf_ddm's metadata is visible in the child")
    except importlib.metadata.PackageNotFoundError:
        pass
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    calls = json.loads(sys.argv[1])
    for folder, kw in calls.items():
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe).__module__.startswith("diffusers_modules."), type(pipe)
        images = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=%d, output_type="np",
                      **kw).images
        np.testing.assert_array_equal(images, np.load(os.path.join(folder, "expected_images.npy")))
        print("ok", os.path.basename(folder), flush=True)
    # The bundled class itself keeps its bundled components (no hf_ddm to map back to).
    again = type(pipe).from_pretrained(folder, trust_remote_code=True)
    assert type(again.unet).__module__.startswith("diffusers_modules.")
    leaked = sorted(m for m in sys.modules if m == "hf_ddm" or m.startswith("hf_ddm."))
    assert not leaked, leaked
    print("hf_ddm absent", flush=True)
    ''' % STEPS
)


def _venv_without_hf_ddm(path):
    """A virtual environment with this interpreter's packages, minus hf_ddm (see the module docstring)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = os.path.join(path, "bin", "python")
    target = subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    sources = [p for p in site.getsitepackages() if os.path.isdir(p)]
    skipped = []
    for src in sources:
        for entry in os.listdir(src):
            if "hf_ddm" in entry.lower().replace("-", "_"):
                skipped.append(entry)
                continue
            link = os.path.join(target, entry)
            if not os.path.lexists(link):
                os.symlink(os.path.join(src, entry), link)
    assert any(e.endswith(".pth") for e in skipped), f"expected hf_ddm's editable .pth among {skipped}"
    return python


def test_loads_where_hf_ddm_is_not_installed(saved, exported, tmp_path):
    python = _venv_without_hf_ddm(tmp_path / "venv")
    calls = {folder: kw for folder, _cls, kw, _images in saved.values()}
    calls.update({exported[name]: kw for name, (_folder, _cls, kw, _images) in saved.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TRANSFORMERS_OFFLINE="1")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # The child's own check comes first: without the venv trick, hf_ddm would be importable.
    proc = subprocess.run([python, "-I", str(script), json.dumps(calls)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("ok ") == 2 * len(KINDS) and "hf_ddm absent" in proc.stdout


# --- the rewriting itself -----------------------------------------------------------------------------

def test_rewrite_forms():
    modules = {"hf_ddm": True, "hf_ddm.processes": False, "hf_ddm.schedulers": True, "hf_ddm.schedulers.base": False}
    names = flat_names(modules)
    src = ("from __future__ import annotations\n"
           "from ..processes import (a,\n    b as c)\n"
           "from .base import X\n"
           "def f():\n    from hf_ddm.processes import d\n    return d\n")
    out, deps = _rewrite(src, "vp.py", "hf_ddm.schedulers.vp", False, names, modules)
    assert deps == ["hf_ddm.processes", "hf_ddm.schedulers.base"]
    assert "from .hf_ddm_processes import a, b as c\n" in out
    assert "from .hf_ddm_base import X\n" in out
    assert "    from .hf_ddm_processes import d\n" in out
    for bad in ("import hf_ddm.processes\n", "from hf_ddm import processes\n", "from hf_ddm.processes import *\n"):
        with pytest.raises(PortableSaveError):
            _rewrite(bad, "x.py", "hf_ddm.x", False, names, modules)


def test_flat_names_disambiguate_shared_stems():
    modules = {"hf_ddm": True, "hf_ddm.models": True, "hf_ddm.models.layers": False, "hf_ddm.training": True,
               "hf_ddm.training.layers": False, "hf_ddm.text": False}
    names = flat_names(modules)
    assert names["hf_ddm.models.layers"] == "hf_ddm_models_layers"
    assert names["hf_ddm.training.layers"] == "hf_ddm_training_layers"
    assert names["hf_ddm.text"] == "hf_ddm_text"
    # The real package: one bundle name per module.
    real = flat_names()
    assert len(set(real.values())) == len(real) and real["hf_ddm.models.unet"] == "hf_ddm_unet"


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "space", "models")


SHIPPED_NAMES = sorted(n for n in os.listdir(SHIPPED) if os.path.isdir(os.path.join(SHIPPED, n)))


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_folders_carry_no_library_code(name):
    """The repository stores hf_ddm's code once: a shipped folder holds weights, configs and cards, no code
    (the installed class loads it; ``python -m hf_ddm.portable`` generates what a published copy carries)."""
    folder = os.path.join(SHIPPED, name)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    stem, cls = index["_class_name"]
    code = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder)
                  for f in files if f.endswith(".py"))
    assert code == [], code
    assert getattr(__import__("hf_ddm.pipelines", fromlist=[cls]), cls).__module__ == f"hf_ddm.pipelines.{stem}"
    assert INDEX_KEY not in index
    for component in ("unet", "scheduler", "vae", "classifier"):
        if component in index:
            assert index[component][0].startswith("hf_ddm."), (component, index[component])


def test_installed_class_needs_no_bundled_file(saved, tmp_path):
    """A portable folder (what earlier versions shipped and published) with every code file removed still
    loads with the installed class: its model_index.json maps each bundle back to the installed module."""
    import shutil

    folder, cls, kw, expected = saved["latent_class"]
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("*.py"))
    assert json.load(open(bare / "model_index.json"))["unet"] == ["hf_ddm_unet", "UNet"]
    np.testing.assert_array_equal(_run(cls.from_pretrained(bare), kw), expected)


def test_export_refuses_what_is_not_a_pipeline_folder(saved, tmp_path):
    with pytest.raises(PortableSaveError, match="model_index.json"):
        export(str(tmp_path), str(tmp_path / "out"))
    folder = saved["pixel_vp"][0]
    with pytest.raises(PortableSaveError, match="another folder"):
        export(folder, folder)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": ["nope", "NopePipeline"]}))
    with pytest.raises(PortableSaveError, match="not a pipeline of the installed hf_ddm"):
        export(str(odd), str(tmp_path / "odd_out"))
