"""Model registry: each demo model is loaded once per process and shared by every request.

Where a model comes from, first match wins:

1. ``HF_DDM_MODEL_<NAME>`` (e.g. ``HF_DDM_MODEL_LDM_TEXT=user/repo`` or a local folder): a Hub repo id
   (``HF_DDM_MODEL_<NAME>_REVISION`` pins a revision) or a folder path;
2. ``<models dir>/<name>/`` -- ``space/models/<name>/`` by default (``HF_DDM_SPACE_MODELS_DIR``
   overrides the directory);
3. otherwise a tiny *randomly initialised* model of the same shape (Fashion-MNIST: 32x32, 1 channel,
   10 classes), built with a fixed seed, saved with ``save_pretrained`` to a cache folder and loaded back
   through the very same loader. It produces noise-like images and the UI says so.

Loading is diffusers' own: a model is a ``save_pretrained`` folder (or Hub repo) of an hf_ddm pipeline --
what ``PixelDiffusionPipeline`` / ``LatentDiffusionPipeline`` / ``ClassifierGuidedPipeline`` and the
``train/*.py`` scripts write. Its ``model_index.json`` names the class as ``["<module>", "<Class>"]``;
:func:`load_pipeline` reads that file (``DiffusionPipeline.load_config``, local or through the HF cache),
takes the *installed* class ``hf_ddm.pipelines.<Class>`` and calls its ``from_pretrained`` (never the
folder's copy of the code). Anything else (a diffusers ``DDPMPipeline`` folder, a folder without
``model_index.json``) is refused with a clear error. Hub ids resolve through the standard HF cache, so
``HF_HUB_OFFLINE=1`` loads an already-downloaded repo without the network.

Class names come from the pipeline's config (``pipe.config.class_names``, saved in model_index.json);
without them a 10-class model gets the Fashion-MNIST names, others ``class i``. A text model's prompt
template is read from its model card (``- prompt template: `...` ``, what ``train/train_ldm.py`` writes),
else ``"a photo of a {}"``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from . import samplers as sampler_catalogue

logger = logging.getLogger("hf_ddm_space")

SPACE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS_DIR = os.path.join(SPACE_DIR, "models")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # folder name under models/ and the env var suffix
    label: str  # what the UI shows
    description: str


SPECS: Dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("ddpm", "Pixel DDPM (unconditional)", "pixel-space U-Net trained with the discrete VP (DDPM) process"),
        ModelSpec("ldm_class", "Latent diffusion, class-conditional",
                  "U-Net on KL-VAE latents, class labels with classifier-free guidance"),
        ModelSpec("ldm_text", "Latent diffusion, text-conditional",
                  "U-Net on KL-VAE latents, cross-attention to a small CLIP text encoder, classifier-free guidance"),
        ModelSpec("guided", "Classifier-guided diffusion",
                  "unconditional U-Net (the shipped one works on KL-VAE latents) steered by a noise-aware classifier "
                  "(Dhariwal & Nichol)"),
        ModelSpec("sde", "Score SDE (continuous time)",
                  "pixel U-Net trained on a continuous-time SDE; reverse-SDE, ODE and PC samplers"),
    )
}


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: object  # an hf_ddm pipeline; never run it directly: use ``pipeline_with``
    source: str  # "hub:<id>[@<revision>]", "folder:<path>" or "demo"
    class_names: Optional[List[str]] = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    samplers: Dict[str, "sampler_catalogue.Sampler"] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.source != "demo"

    @property
    def kind(self) -> str:
        comps = self.pipe.components
        if comps.get("classifier") is not None:
            return "guided"
        if comps.get("text_encoder") is not None:
            return "text"
        if getattr(self.pipe.unet.config, "num_class_embeds", None):
            return "class"
        return "unconditional"

    @property
    def num_classes(self) -> int:
        if self.kind == "guided":
            return int(self.pipe.classifier.config.num_classes)
        if self.kind == "class":
            return int(self.pipe.unet.config.num_class_embeds)
        return 0

    @property
    def family(self) -> str:
        return sampler_catalogue.process_family(self.pipe.scheduler)

    def pipeline_with(self, scheduler):
        """A new pipeline object sharing this model's (read-only) networks, with its own scheduler:
        concurrent requests never share scheduler state or evaluation counters."""
        params = _init_params(type(self.pipe))
        comps = {k: v for k, v in self.pipe.components.items() if k in params}
        comps["scheduler"] = scheduler
        # and the folder's settings: class names, default guidance scale and interval
        comps.update({k: self.pipe.config[k] for k in params - set(comps) if k in self.pipe.config})
        pipe = type(self.pipe)(**comps)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _init_params(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}


# ------------------------------------------------------------------------------------------------
# Loading: diffusers' from_pretrained of the hf_ddm pipeline class model_index.json names
# ------------------------------------------------------------------------------------------------


def read_model_index(path_or_id: str, revision: Optional[str] = None) -> dict:
    """model_index.json of a folder or Hub repo (through the HF cache; ``HF_HUB_OFFLINE`` respected)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(path_or_id, revision=revision))
    except EnvironmentError as e:
        if os.path.isdir(path_or_id):
            raise ValueError(
                f"{path_or_id}: no model_index.json -- a model folder must be the save_pretrained folder of an "
                "hf_ddm pipeline (what train/train_ddpm.py and train/train_ldm.py write)"
            ) from e
        raise


def pipeline_class(index: dict, where: str = "model"):
    """The installed hf_ddm pipeline class that ``index["_class_name"]`` names (``["<module>", "<Class>"]``,
    as hf_ddm's save_pretrained writes it); anything else is refused."""
    from hf_ddm import pipelines
    from hf_ddm.pipeline_utils import HfDdmPipeline

    name = index.get("_class_name")
    class_name = name[1] if isinstance(name, (list, tuple)) and len(name) == 2 else name
    cls = getattr(pipelines, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, HfDdmPipeline)):
        raise ValueError(
            f"{where}: model_index.json names pipeline class {name!r}, which is not an hf_ddm pipeline "
            f"(one of {', '.join(pipelines.__all__)}); save the model with an hf_ddm pipeline's save_pretrained "
            "(what train/train_ddpm.py and train/train_ldm.py write)"
        )
    return cls


def load_pipeline(path_or_id: str, revision: Optional[str] = None):
    """A saved hf_ddm pipeline (folder or Hub repo id) as the installed hf_ddm class it names, ready for
    inference (eval mode, no gradients, no progress bar)."""
    index = read_model_index(path_or_id, revision)
    cls = pipeline_class(index, path_or_id)
    # Importing hf_ddm (done by hf_ddm.pipelines) imports every component module the index can name,
    # which diffusers needs before it loads a component; the folder's own code copy is never run.
    # Shipped weights are fp16 to keep the Space small; CPU inference runs in float32.
    pipe = cls.from_pretrained(path_or_id, revision=revision, dtype=torch.float32)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_names_of(pipe, num_classes: int) -> Optional[List[str]]:
    """``pipe.config.class_names`` (fitted to ``num_classes`` when that is known, i.e. not 0); else the
    Fashion-MNIST names for 10 classes, ``class i`` otherwise."""
    names = list(getattr(pipe.config, "class_names", None) or [])
    if names and num_classes and len(names) != num_classes:
        logger.warning("%d class_names for %d classes; padding / trimming", len(names), num_classes)
        names = (names + [f"class {i}" for i in range(len(names), num_classes)])[:num_classes]
    if not names and num_classes == len(FASHION_MNIST_CLASSES):
        names = list(FASHION_MNIST_CLASSES)
    if not names and num_classes:
        names = [f"class {i}" for i in range(num_classes)]
    return names or None


_CARD_TEMPLATE = re.compile(r"prompt template[^:\n]*:\s*`([^`\n]*\{\}[^`\n]*)`", re.IGNORECASE)


def prompt_template_of(path_or_id: str, revision: Optional[str] = None) -> str:
    """The prompt template a model card states (``- prompt template: `a photo of a {}` ``), else the default."""
    try:
        if os.path.isdir(path_or_id):
            card = os.path.join(path_or_id, "README.md")
        else:
            from huggingface_hub import hf_hub_download

            card = hf_hub_download(path_or_id, "README.md", revision=revision)
        with open(card, encoding="utf-8") as f:
            match = _CARD_TEMPLATE.search(f.read())
    except Exception:  # no card (or not reachable): the default
        return DEFAULT_PROMPT_TEMPLATE
    return match.group(1) if match else DEFAULT_PROMPT_TEMPLATE


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------


def env_var(name: str) -> str:
    return "HF_DDM_MODEL_" + name.upper()


def models_dir() -> str:
    return os.environ.get("HF_DDM_SPACE_MODELS_DIR", DEFAULT_MODELS_DIR)


def demo_cache_dir() -> str:
    return os.environ.get("HF_DDM_SPACE_DEMO_CACHE", os.path.join(tempfile.gettempdir(), "hf_ddm_space_demo"))


def resolve(name: str):
    """(folder or Hub id, revision, source) for model ``name``; a ref of None means: build the untrained
    demo model. Nothing is downloaded here."""
    ref = os.environ.get(env_var(name), "").strip()
    if ref:
        if os.path.isdir(ref):
            return ref, None, f"folder:{ref}"
        revision = os.environ.get(env_var(name) + "_REVISION", "").strip() or None
        return ref, revision, f"hub:{ref}" + (f"@{revision}" if revision else "")
    shipped = os.path.join(models_dir(), name)
    if os.path.isdir(shipped):  # a folder there is meant as the model: a broken one fails loudly
        return shipped, None, f"folder:{shipped}"
    return None, None, "demo"


class Registry:
    """Loads each model on first use (thread-safe) and keeps it for the life of the process."""

    def __init__(self):
        self._models: Dict[str, LoadedModel] = {}
        self._locks = {name: threading.Lock() for name in SPECS}

    def names(self) -> List[str]:
        return list(SPECS)

    def get(self, name: str) -> LoadedModel:
        if name not in SPECS:
            raise KeyError(f"unknown model {name!r}; choose one of {list(SPECS)}")
        model = self._models.get(name)
        if model is not None:
            return model
        with self._locks[name]:
            if name not in self._models:
                self._models[name] = self._load(name)
            return self._models[name]

    def loaded(self) -> Dict[str, LoadedModel]:
        return dict(self._models)

    def load_all(self) -> None:
        for name in SPECS:
            self.get(name)

    def _load(self, name: str) -> LoadedModel:
        spec = SPECS[name]
        ref, revision, source = resolve(name)
        if ref is None:
            from .demo_models import build_demo_folder

            ref = build_demo_folder(name, demo_cache_dir())
        logger.info("loading model %s from %s", name, source if source != "demo" else f"demo ({ref})")
        pipe = load_pipeline(ref, revision)
        model = LoadedModel(spec=spec, pipe=pipe, source=source)
        model.class_names = class_names_of(pipe, model.num_classes)
        if model.kind == "text":  # class names (saved, else Fashion-MNIST's) become the suggested prompts
            model.class_names = model.class_names or list(FASHION_MNIST_CLASSES)
            model.prompt_template = prompt_template_of(ref, revision)
        model.samplers = sampler_catalogue.catalogue(pipe.scheduler)
        return model


__all__ = ["SPECS", "ModelSpec", "LoadedModel", "Registry", "load_pipeline", "read_model_index", "pipeline_class",
           "class_names_of", "resolve", "env_var", "FASHION_MNIST_CLASSES"]
