"""What every hf_ddm pipeline shares: the denoising loop, input checks, output conversion, and a
``save_pretrained`` that makes the saved folder self-describing.

The loop is diffusers' standard one and honours the whole scheduler contract (``init_noise_sigma``,
``scale_model_input``, repeated timesteps of multi-evaluation solvers, ``eta``/``generator`` when the
scheduler's ``step`` takes them), so any hf_ddm or diffusers scheduler can be swapped in.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .adapter import ModelAdapter
from .guidance import check_guidance_interval, check_guidance_scale, guidance_active, interval_config
from .limits import as_class_ids, check_batch_size, check_step_count

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# hf_ddm is not on PyPI (the name `hf-ddm` is still free there, so installing by that name finds nothing):
# every message that tells a user how to get it says this.
INSTALL_HINT = ("hf_ddm is not on PyPI: install it from a clone of its repository, `pip install -e <clone>` "
                "(distribution name `hf-ddm`)")

# Keys under which diffusers / transformers record where a component was loaded from.
_ORIGIN_KEYS = ("_name_or_path", "name_or_path")


def is_hub_id(value) -> bool:
    """True for a Hub repo id ("user/name", "name") that is not also a path on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value or os.path.isabs(value) or value.startswith((".", "~")):
        return False
    if os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def strip_local_origins(folder) -> List[str]:
    """Remove every ``_name_or_path`` that is a path on this machine from the JSON configs under ``folder``
    (a Hub id stays). diffusers records where each component was loaded from and saves it again; a local
    path there publishes the training machine's layout, and the loader sets the key afresh on load anyway.
    Returns the files changed."""
    changed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if not name.endswith(".json"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            drop = [k for k in _ORIGIN_KEYS if k in data and not is_hub_id(data[k])]
            if not drop:
                continue
            for k in drop:
                del data[k]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
            changed.append(path)
    return changed


def _install_guard() -> str:
    """The lines a ``portable=False`` pipeline file runs before its first hf_ddm import: where hf_ddm is missing,
    stop with how to install it (diffusers' generic import check would suggest a PyPI name that does not
    exist) instead of a bare ModuleNotFoundError."""
    message = ("This folder was saved with save_pretrained(portable=False) and needs the hf_ddm package. "
               + INSTALL_HINT + "; or load a portable copy (python -m hf_ddm.portable FOLDER DEST, where hf_ddm is "
               "installed).")
    return f"import importlib.util\nif importlib.util.find_spec(\"hf_ddm\") is None:\n    raise ImportError({message!r})\n"


def loader_file(module: str, class_name: str) -> str:
    """The pipeline file of a ``portable=False`` folder whose class is hf_ddm's own: it imports the installed
    class (so the folder always runs the hf_ddm it is loaded with) instead of carrying a copy of its code."""
    return (f'"""Saved by hf_ddm with portable=False: the installed hf_ddm\'s {class_name}."""\n'
            + _install_guard() + f"from {module} import {class_name}  # noqa: E402,F401\n")


def _with_install_guard(code: str) -> str:
    """A pipeline file of one's own (a subclass outside hf_ddm) saved with ``portable=False``: the guard goes
    right before its first hf_ddm import, so a module docstring and ``from __future__`` imports stay first."""
    import ast

    tree = ast.parse(code)
    first = next((n for n in tree.body if isinstance(n, ast.ImportFrom) and not n.level
                  and (n.module or "").split(".")[0] == "hf_ddm"), None)
    if first is None:
        return code
    lines = code.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1]) + _install_guard() + "\n" + "".join(lines[first.lineno - 1:])


def class_name_index(names: List[str], name) -> Optional[int]:
    """The index of class ``name`` in ``names``: the exact name, else the one name equal to it ignoring case
    and surrounding spaces ("sneaker" is "Sneaker", as the Space reads it); None when there is none or two."""
    if not isinstance(name, str):
        return None
    if name in names:
        return names.index(name)
    folded = [i for i, n in enumerate(names) if isinstance(n, str) and n.strip().casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


class HfDdmPipeline(DiffusionPipeline):
    """Base class of hf_ddm's pipelines (not itself a pipeline)."""

    # The pipeline's own file, copied next to model_index.json by save_pretrained.
    _pipeline_file: Optional[str] = None
    # What ``callback_on_step_end_tensor_inputs`` may name (diffusers' convention): the latents after the
    # step, the (guided) model output, and the clean sample it predicts (the model adapter's x0).
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

    # --- checks -----------------------------------------------------------------------------------
    @staticmethod
    def check_common(batch_size, num_inference_steps, output_type, generator):
        check_batch_size(batch_size)
        check_step_count(num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not (generator is None or isinstance(generator, torch.Generator) or (
                isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator))):
            raise TypeError(f"generator must be a torch.Generator, a list of them (one per image) or None, got "
                            f"{type(generator).__name__}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is {batch_size}; "
                "pass one generator per image"
            )

    # --- the loop ---------------------------------------------------------------------------------
    # The methods below are called by the pipeline files that saved folders carry, so their signatures
    # are API for every folder already saved (tests/test_compat.py loads 0.1.0 folders).
    def input_shape(self, batch_size: int):
        """(batch, unet in_channels, *unet sample_size): the shape the denoising loop works on."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    def prepare_latents(self, shape, dtype, generator, latents: Optional[torch.Tensor] = None):
        """Initial noise of ``shape`` (or the given ``latents``) times the scheduler's ``init_noise_sigma``."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents must be finite (they contain NaN or inf): the loop would return black images")
        else:
            latents = latents.to(self._execution_device, dtype)
        return latents * self.scheduler.init_noise_sigma

    def _step_kwargs(self, generator, eta: Optional[float]) -> Dict:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "generator" in params:
            kwargs["generator"] = generator
        if eta is not None and "eta" in params:
            kwargs["eta"] = eta
        return kwargs

    def denoise(
        self,
        latents: torch.Tensor,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_inference_steps: int,
        generator=None,
        eta: Optional[float] = None,
        timesteps: Optional[List[int]] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
    ) -> torch.Tensor:
        """Run the scheduler from noise to data. ``model_fn(model_input, t)`` returns the (guided)
        model output in the scheduler's prediction type. Returns the final latents.

        ``callback_on_step_end(pipe, i, t, tensors)`` runs after each step with the names asked for in
        ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``; see ``_callback_tensor_inputs``):
        ``pred_original_sample`` is the model's own x0 at this evaluation (before any clipping the scheduler
        applies; latents for a latent model). Returning ``{"latents": ...}`` replaces the latents."""
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}")
        scheduler = self.scheduler
        # Built before the loop: a scheduler whose model input the adapter cannot read fails here, not mid-run.
        adapter = None
        if callback_on_step_end is not None and "pred_original_sample" in tensor_inputs:
            adapter = ModelAdapter(None, scheduler)
        if timesteps is not None:
            scheduler.set_timesteps(timesteps=timesteps, device=self._execution_device)
        else:
            scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        step_kwargs = self._step_kwargs(generator, eta)
        self._num_model_evaluations = 0
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model_input = scheduler.scale_model_input(latents, t)
            model_output = model_fn(model_input, t)
            self._num_model_evaluations += 1
            latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                local = {"latents": latents, "model_output": model_output}
                if adapter is not None:  # at the model's input: diffusers' Euler-type schedulers scale it
                    local["pred_original_sample"] = adapter.convert(model_output, model_input, t, "sample")
                out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs}) or {}
                latents = out.get("latents", latents)
        return latents

    @property
    def num_model_evaluations(self) -> int:
        """Model evaluations (per image batch, per guidance branch) made by the last call."""
        return getattr(self, "_num_model_evaluations", 0)

    def compile_unet(self, **compile_kwargs):
        """Opt in to ``torch.compile`` for the denoiser, the network called at every step; returns the pipeline.

        In place (``nn.Module.compile``): ``self.unet`` stays the same module, so ``save_pretrained``,
        ``.to(...)`` and offload hooks are unchanged. The first call compiles (tens of seconds on a GPU), and
        so does each new batch size or dtype. ``compile_kwargs`` go to ``torch.compile`` (``mode``,
        ``backend``, ``dynamic``, ``fullgraph``)."""
        self.unet.compile(**compile_kwargs)
        return self

    @staticmethod
    def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
        """Latents the U-Net works on, (z - shift) * scale, back to images through the VAE."""
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample

    def output_images(self, latents: torch.Tensor) -> torch.Tensor:
        """The images a sampling run ends in, in [-1, 1] as ``to_output`` reads them: the final latents decoded
        through the pipeline's VAE when it has one, clamped (what few-step calibration and its benchmark
        measure an error on)."""
        vae = getattr(self, "vae", None)
        return (self.decode_latents(vae, latents) if vae is not None else latents).clamp(-1, 1)

    # --- output -----------------------------------------------------------------------------------
    def to_output(self, images: torch.Tensor, output_type: str, return_dict: bool):
        """images in [-1, 1] (NCHW) -> the requested output type, diffusers' conventions."""
        if output_type != "latent":
            images = VaeImageProcessor(do_normalize=True).postprocess(images.float(), output_type=output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # --- conditioning helpers ---------------------------------------------------------------------
    def class_ids(self, class_labels) -> torch.Tensor:
        """Class labels as a 1-D long tensor: ids (int, list, tensor) or names from ``config.class_names``."""
        if class_labels is None:
            raise ValueError("class_labels is required here: pass a class id or name, or a list of them (one per image)")
        if isinstance(class_labels, (dict, set)) or (
                isinstance(class_labels, (list, tuple)) and any(c is None or isinstance(c, (dict, list)) for c in class_labels)):
            raise TypeError(f"class_labels must be a class id, a class name, or a list / tensor of them, got "
                            f"{class_labels!r}")
        if isinstance(class_labels, (list, tuple)) and not class_labels:
            raise ValueError("class_labels is an empty list: pass one label for the batch or one per image")
        if isinstance(class_labels, str) or (
            isinstance(class_labels, (list, tuple)) and class_labels and isinstance(class_labels[0], str)
        ):
            names = list(getattr(self.config, "class_names", None) or [])
            wanted = [class_labels] if isinstance(class_labels, str) else list(class_labels)
            ids = [class_name_index(names, n) for n in wanted]
            unknown = [n for n, i in zip(wanted, ids) if i is None]
            if unknown:
                raise ValueError(f"class_labels {unknown} are not among this pipeline's class_names {names}")
            return torch.tensor(ids, dtype=torch.long)
        return as_class_ids(class_labels).reshape(-1)

    def check_class_labels(self, class_labels, batch_size: int, num_classes: Optional[int] = None):
        """Class ids as a (batch_size,) long tensor on the execution device, validated against
        ``num_classes`` (default: the U-Net's ``num_class_embeds``); one id broadcasts."""
        if class_labels is None:
            return None
        if num_classes is None:
            num_classes = getattr(self.unet.config, "num_class_embeds", None)
            if not num_classes:
                raise ValueError(
                    "class_labels were given but the unet is not class-conditional (num_class_embeds is None)"
                )
        labels = self.class_ids(class_labels)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"class_labels has {labels.numel()} entries for batch_size {batch_size}")
        if (labels < 0).any() or (labels >= num_classes).any():
            raise ValueError(f"class_labels must be in [0, {num_classes - 1}], got {labels.tolist()}")
        return labels.to(self._execution_device)

    def register_class_names(self, class_names):
        """Human-readable class names, saved in model_index.json (``config.class_names``)."""
        self.register_to_config(class_names=list(class_names) if class_names is not None else None)

    def register_default_guidance_scale(self, value: Optional[float]):
        """The guidance scale a call without ``guidance_scale`` uses, saved in model_index.json
        (``config.default_guidance_scale``): the one the model card recommends. None: 1.0."""
        if value is not None:
            value = check_guidance_scale(value, "default_guidance_scale")
        self.register_to_config(default_guidance_scale=value)

    def guidance_scale_or_default(self, guidance_scale: Optional[float]) -> float:
        if guidance_scale is None:
            guidance_scale = getattr(self.config, "default_guidance_scale", None)
        return check_guidance_scale(1.0 if guidance_scale is None else guidance_scale)

    def register_default_guidance_interval(self, value):
        """The noise levels (low, high) a call without ``guidance_interval`` guides in, saved in
        model_index.json (``config.default_guidance_interval``, no upper end as null). None: every level."""
        self.register_to_config(default_guidance_interval=interval_config(
            check_guidance_interval(value, "default_guidance_interval")))

    def guidance_interval_or_default(self, guidance_interval) -> Optional[Tuple[float, float]]:
        """``guidance_interval`` checked, or the folder's default; ``(0, None)`` guides at every level."""
        if guidance_interval is None:
            return check_guidance_interval(getattr(self.config, "default_guidance_interval", None),
                                           "default_guidance_interval")
        return check_guidance_interval(guidance_interval)

    @staticmethod
    def guided_model_fn(model: Callable, cond: Dict, uncond: Dict, guidance_scale: float,
                        guidance_interval: Optional[Tuple[float, float]] = None, scheduler=None) -> Callable:
        """A model_fn with classifier-free guidance: one batched call for both branches, or a single
        branch when the scale makes the other irrelevant (w = 1: conditional only; w = 0: unconditional).
        With ``guidance_interval`` (checked; ``scheduler`` reads each timestep's noise level) the
        conditional branch alone runs outside it."""
        from .guidance import classifier_free

        if guidance_interval is not None and scheduler is None:
            raise ValueError("guided_model_fn: a guidance_interval needs the scheduler that reads the noise levels")
        if guidance_scale == 1.0:
            return lambda x, t: model(x, t, **cond)
        if guidance_scale == 0.0 and guidance_interval is None:
            return lambda x, t: model(x, t, **uncond)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}

        def fn(x, t):
            if not guidance_active(scheduler, t, guidance_interval):
                return model(x, t, **cond)
            out = model(torch.cat([x, x]), t, **both)
            out_uncond, out_cond = out.chunk(2)
            return classifier_free(out_uncond, out_cond, guidance_scale)

        return fn

    # --- saving -----------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, *args, **kwargs):
        """Called on a concrete hf_ddm pipeline class, a saved ``[module, Class]`` name means that
        class itself: ``LatentDiffusionPipeline.from_pretrained(dir)`` must return the installed
        class, never import the folder's copy of the code."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        name = config.get("_class_name")
        if isinstance(name, (list, tuple)) and len(name) == 2 and name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
            # A portable folder (save_pretrained(portable=True)) names bundled code for its hf_ddm
            # components and records their installed modules: the installed class loads the installed
            # components. Only when this is the installed hf_ddm: a bundled copy of this file (module
            # diffusers_modules.local...) keeps the bundled entries.
            installed = config.get("_hf_ddm_modules")
            if isinstance(installed, dict) and __name__.startswith("hf_ddm."):
                for component, module in installed.items():
                    entry = config.get(component)
                    if isinstance(entry, (list, tuple)) and len(entry) == 2:
                        config[component] = [module, entry[1]]
        return out

    def save_pretrained(self, save_directory, *args, portable: bool = True, **kwargs):
        """diffusers' save, plus a pipeline file beside model_index.json, named in its ``_class_name`` as
        ``[module, Class]``: ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` then returns
        this class, not a diffusers one of the same name.

        ``portable=True`` (the default) also makes the folder load where hf_ddm is not installed: each hf_ddm
        component's subfolder, and the root, carry the hf_ddm modules they need (imports rewritten to
        same-folder relative ones) and model_index.json names that code; ``<ThisClass>.from_pretrained(dir)``
        still loads the installed classes. The bundled code is a snapshot of this hf_ddm; diffusers/transformers
        components are untouched and must be installed where the folder is loaded. Details: ``hf_ddm.portable``.
        ``portable=False`` names the installed modules and carries no copy of hf_ddm's code: its pipeline file
        imports the installed class (and says how to install hf_ddm where it is missing), so the folder runs
        whatever hf_ddm loads it. The repository's own folders (``space/models``) are saved so;
        ``python -m hf_ddm.portable FOLDER DEST`` writes the portable copy that is published.

        ``push_to_hub=True`` (with diffusers' ``repo_id``, ``token``, ``private``, ``create_pr``,
        ``commit_message``) uploads the folder once it is complete, code files included."""
        push = kwargs.pop("push_to_hub", False)
        hub = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "create_pr", "commit_message") if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        source = self._pipeline_file or inspect.getfile(type(self))
        stem = os.path.splitext(os.path.basename(source))[0]
        module = type(self).__module__
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [stem, type(self).__name__]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        if portable:
            # Imported by name, not `from .portable import`: bundling reads the installed package's
            # sources, so the bundled copy of this file neither carries portable.py nor can save portable.
            try:
                make_portable = importlib.import_module("hf_ddm.portable").make_portable
            except ImportError as err:
                raise RuntimeError(f"save_pretrained(portable=True) needs the installed hf_ddm package; {INSTALL_HINT}. "
                                   "Or save with portable=False.") from err
            make_portable(save_directory, module, source)
        else:
            if module.startswith(("hf_ddm.", "diffusers_modules.")):  # hf_ddm's class, installed or bundled
                code = loader_file(f"hf_ddm.pipelines.{stem}", type(self).__name__)
            else:
                with open(source, encoding="utf-8") as f:
                    code = _with_install_guard(f.read())
            with open(os.path.join(save_directory, stem + ".py"), "w", encoding="utf-8") as f:
                f.write(code)
        strip_local_origins(save_directory)
        if push:
            import huggingface_hub

            repo_id = hub.get("repo_id") or os.path.basename(os.path.normpath(str(save_directory)))
            repo_id = huggingface_hub.create_repo(
                repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")
            ).repo_id
            huggingface_hub.upload_folder(
                repo_id=repo_id, folder_path=save_directory, token=hub.get("token"),
                commit_message=hub.get("commit_message") or "Upload hf_ddm pipeline", create_pr=hub.get("create_pr", False),
            )


__all__ = ["HfDdmPipeline", "class_name_index", "OUTPUT_TYPES", "INSTALL_HINT", "is_hub_id", "strip_local_origins"]
