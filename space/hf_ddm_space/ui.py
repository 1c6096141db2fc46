"""The Space: request validation, generation with live progress and an optional denoising animation,
and the Gradio Blocks UI around it.

``SpaceApp.generate`` does a request's work; it is a plain method, so tests call it directly. Over HTTP
(``api_name="/generate"``) it runs through ``generate_cancellable``, which stops it between denoising steps
when the client cancels or goes away. ``SpaceApp.compare`` (``api_name="/compare"``, through
``compare_cancellable``) runs one request's seed / class / prompt / steps / guidance with 2-4 samplers in turn
and returns one image grid per sampler, captioned with its model evaluations and wall time. Anything that goes wrong inside a request becomes a
``gr.Error`` for that request only: the process, the loaded models and other users' requests carry on.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import List, Optional, Tuple

import gradio as gr
import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from hf_ddm.guidance import describe_interval
from hf_ddm.pipeline_utils import class_name_index
from hf_ddm.schedulers.sde import STOCHASTIC_SOLVERS

from .registry import SPECS, LoadedModel, Registry, env_var
from .samplers import AS_SAVED, UNIFORM_2M, describe_saved, solver_of

logger = logging.getLogger("hf_ddm_space")

CYCLE = "(one of each class, in turn)"
ANIMATIONS = ("off", "x0-prediction", "noisy sample x_t")
MAX_SEED = 2**31 - 1
MIN_COMPARE = 2  # a comparison needs two samplers
COMPARE_INPUT = "Samplers to compare"  # the multiselect's label: errors about the selection name it
# Preferred default sampler per process family (falls back to "as saved").
DEFAULT_SAMPLER = {
    # DPM-Solver++(2M) on the model's own discrete schedule, steps uniform in train time: as good as the
    # log-SNR grid at 20 steps (the shipped ddpm's best FD) and far better at 6-10, where visitors go.
    "vp": UNIFORM_2M,
    "ve": "PC: reverse diffusion + Langevin corrector (VEScheduler)",
    "sde:ve": "SDE: predictor-corrector (reverse diffusion + 1 Langevin)",
}
# Continuous VP / sub-VP SDE models start on the sampler their folder saves (the one their card recommends:
# reverse-SDE Euler-Maruyama for a model whose probability-flow samples speckle, DPM-Solver++(2M) for one
# whose do not).
# Families whose default sampler needs more steps than Limits.default_steps (capped at max_steps): the
# stochastic samplers. VE predictor-corrector sampling is a many-step method (score_sde uses 1000), and
# Euler-Maruyama's FD keeps falling with the step count (README, quality table).
DEFAULT_STEPS = {"ve": 100, "sde:ve": 100}
STOCHASTIC_STEPS = 100  # a saved stochastic SDE solver
# Compare mode's second pick when the model's saved sampler is the default's algorithm: diffusers' best
# multistep solver, the peer a visitor would otherwise use (another algorithm, not another grid of the same).
COMPARE_WITH = "UniPC (diffusers)"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def public_source(source: str) -> str:
    """Where a model came from, as visitors may see it: a Hub id as is, a folder by its name only (the
    server's directory layout is nobody's business)."""
    kind, _, ref = source.partition(":")
    if kind == "folder":
        return f"folder {os.path.basename(os.path.normpath(ref))}/"
    return ref or source


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Override with HF_DDM_SPACE_<FIELD> environment variables."""

    max_images: int = 10  # one image per class of a 10-class model in one run
    max_steps: int = 100
    max_guidance: float = 20.0
    max_prompt_chars: int = 200
    max_frames: int = 24
    concurrency: int = 2  # requests running at once (gradio default_concurrency_limit)
    max_queue: int = 16  # requests waiting; more are turned away with a "queue full" message
    default_steps: int = 20
    default_images: int = 4
    max_compare: int = 4  # samplers in one comparison (each runs the full request: the work multiplies)

    @classmethod
    def from_env(cls) -> "Limits":
        d = cls()
        return cls(
            max_images=_env_int("HF_DDM_SPACE_MAX_IMAGES", d.max_images),
            max_steps=_env_int("HF_DDM_SPACE_MAX_STEPS", d.max_steps),
            max_guidance=float(os.environ.get("HF_DDM_SPACE_MAX_GUIDANCE", d.max_guidance)),
            max_prompt_chars=_env_int("HF_DDM_SPACE_MAX_PROMPT_CHARS", d.max_prompt_chars),
            max_frames=_env_int("HF_DDM_SPACE_MAX_FRAMES", d.max_frames),
            concurrency=_env_int("HF_DDM_SPACE_CONCURRENCY", d.concurrency),
            max_queue=_env_int("HF_DDM_SPACE_MAX_QUEUE", d.max_queue),
            max_compare=max(MIN_COMPARE, _env_int("HF_DDM_SPACE_MAX_COMPARE", d.max_compare)),
            default_steps=min(d.default_steps, _env_int("HF_DDM_SPACE_MAX_STEPS", d.max_steps)),
            default_images=min(d.default_images, _env_int("HF_DDM_SPACE_MAX_IMAGES", d.max_images)),
        )


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def _as_int(value, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    if not math.isfinite(f) or f != int(f):
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    v = int(f)
    if not lo <= v <= hi:
        raise gr.Error(f"{name} must be between {lo} and {hi}, got {v}.")
    return v


def _checked_by_the_app(component):
    """``component`` (a stock gr.Number / gr.Slider) with its value passed to the handler as sent, where
    ``_as_int`` / ``_as_float`` check it by the field's name: Gradio's own preprocess rounds a seed of 1.5 to 2
    (precision=0) without a word, and answers steps="abc" with its generic "the upstream app has raised an
    exception". (An instance attribute, not a subclass: Gradio writes a .pyi beside any module that defines one.)"""
    component.preprocess = lambda payload: payload
    return component


def _as_float(value, name: str, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(f) or not lo <= f <= hi:
        raise gr.Error(f"{name} must be between {lo:g} and {hi:g}, got {value!r}.")
    return f


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(array: np.ndarray, min_size: int = 128) -> Image.Image:
    """(H, W, C) uint8 -> PIL, upscaled (nearest) so tiny images stay crisp in the browser."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = max(1, math.ceil(min_size / max(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def frame_strip(batch: np.ndarray, cell: int = 96, pad: int = 2) -> Image.Image:
    """A row of the batch's images (one animation frame)."""
    tiles = [to_pil(a, min_size=cell).convert("RGB") for a in batch]
    w, h = tiles[0].size
    strip = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + 2 * pad), (255, 255, 255))
    for k, tile in enumerate(tiles):
        strip.paste(tile, (pad + k * (w + pad), pad))
    return strip


def image_grid(batch: np.ndarray, cols: Optional[int] = None, pad: int = 2) -> Image.Image:
    """The batch's images (B, H, W, C uint8) as one grid, ``cols`` wide (default: about square), each tile
    upscaled like a gallery image (``to_pil``), so tile k is exactly what ``generate`` shows as image k."""
    tiles = [to_pil(a).convert("RGB") for a in batch]
    cols = max(1, min(len(tiles), cols or math.ceil(math.sqrt(len(tiles)))))
    rows = math.ceil(len(tiles) / cols)
    w, h = tiles[0].size
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for k, tile in enumerate(tiles):
        grid.paste(tile, (pad + (k % cols) * (w + pad), pad + (k // cols) * (h + pad)))
    return grid


def save_gif(frames: List[Image.Image], captions: List[str]) -> str:
    from PIL import ImageDraw

    out = []
    for frame, caption in zip(frames, captions):
        canvas = Image.new("RGB", (frame.width, frame.height + 16), (255, 255, 255))
        canvas.paste(frame, (0, 16))
        ImageDraw.Draw(canvas).text((4, 2), caption, fill=(0, 0, 0))
        out.append(canvas.convert("P", palette=Image.ADAPTIVE))
    folder = os.path.join(tempfile.gettempdir(), "hf_ddm_space_gifs")
    os.makedirs(folder, exist_ok=True)
    now = time.time()
    for old in os.listdir(folder):  # gradio serves its own copy; ours only need to outlive the request
        try:
            if now - os.path.getmtime(os.path.join(folder, old)) > 3600:
                os.remove(os.path.join(folder, old))
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="trajectory_", suffix=".gif", dir=folder)
    os.close(fd)
    durations = [150] * (len(out) - 1) + [1200]
    out[0].save(path, save_all=True, append_images=out[1:], duration=durations, loop=0)
    return path


# ------------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------------


class RequestCancelled(Exception):
    """Raised between denoising steps once the request that asked for them has been cancelled."""


class SpaceApp:
    def __init__(self, registry: Optional[Registry] = None, limits: Optional[Limits] = None):
        self.registry = registry or Registry()
        self.limits = limits or Limits.from_env()
        self._lock = threading.Lock()
        self._working: List[threading.Event] = []  # the cancel event of every generation in progress

    @property
    def working(self) -> int:
        """Generations in progress (each holds a worker thread and its share of the CPU)."""
        with self._lock:
            return len(self._working)

    @property
    def working_cancelled(self) -> int:
        """Generations in progress whose request was cancelled: they stop at their next step."""
        with self._lock:
            return sum(e.is_set() for e in self._working)

    # --- model information -----------------------------------------------------------------------
    def model_choices(self) -> List[Tuple[str, str]]:
        return [(spec.label, name) for name, spec in SPECS.items()]

    def default_sampler(self, model: LoadedModel) -> str:
        preferred = DEFAULT_SAMPLER.get(model.family)
        return preferred if preferred in model.samplers else AS_SAVED

    def default_guidance(self, model: LoadedModel) -> float:
        """The folder's ``default_guidance_scale`` (the scale its card recommends), else 3."""
        value = getattr(model.pipe.config, "default_guidance_scale", None)
        return float(value) if value is not None else 3.0

    def default_steps(self, model: LoadedModel) -> int:
        steps = DEFAULT_STEPS.get(model.family, self.limits.default_steps)
        if self.default_sampler(model) == AS_SAVED and getattr(model.pipe.scheduler.config, "solver",
                                                                None) in STOCHASTIC_SOLVERS:
            steps = STOCHASTIC_STEPS
        return min(steps, self.limits.max_steps)

    def class_choices(self, model: LoadedModel) -> List[str]:
        if not model.num_classes:
            return []
        return [CYCLE] + list(model.class_names)

    def suggested_prompt(self, model: LoadedModel) -> str:
        if model.kind != "text":
            return ""
        names = list(model.class_names or ["sneaker"])
        return model.prompt_template.format("sneaker" if "sneaker" in names else names[0])

    def model_status(self, model: LoadedModel) -> str:
        spec = model.spec
        lines = [f"**{spec.label}**: {spec.description}.  ",
                 f"Process: `{type(model.pipe.scheduler).__name__}` ({model.family}); "
                 f"pipeline: `{type(model.pipe).__name__}`."]
        if model.trained:
            lines.append(f"\n\nWeights: trained checkpoint from `{public_source(model.source)}`.")
        else:
            lines.append(
                f"\n\n⚠️ **Untrained demo weights.** No checkpoint in `space/models/{spec.name}/` and "
                f"`{env_var(spec.name)}` is not set, so this is a tiny randomly initialised network: "
                "the images are structured noise, but every sampler, the guidance, the progress and the "
                "animation run for real."
            )
        return "".join(lines)

    def banner(self) -> str:
        demo = [m.spec.label for m in self.registry.loaded().values() if not m.trained]
        if not demo:
            return ""
        return ("⚠️ **Untrained demo weights** for: " + ", ".join(demo) +
                ". These tiny random networks stand in until trained checkpoints are dropped into "
                "`space/models/<name>/` (or named by `HF_DDM_MODEL_<NAME>`); their images are noise-like.")

    # --- validation ---------------------------------------------------------------------------------
    def _model(self, model_name) -> LoadedModel:
        if model_name not in SPECS:
            # The UI sends names; API users may send a label.
            by_label = {s.label: n for n, s in SPECS.items()}
            if model_name not in by_label:
                raise gr.Error(f"Unknown model {model_name!r}. Choose one of: {', '.join(SPECS)}.")
            model_name = by_label[model_name]
        try:
            return self.registry.get(model_name)
        except Exception as e:  # a broken checkpoint must not take the app down
            logger.exception("loading model %s failed", model_name)
            raise gr.Error(f"Model {model_name!r} could not be loaded: {type(e).__name__}: {e}")

    def _labels(self, model: LoadedModel, class_name, n: int) -> Optional[List[int]]:
        if not model.num_classes:
            return None
        names = list(model.class_names or [])
        if class_name in (None, "", CYCLE):
            return [k % model.num_classes for k in range(n)]
        # Names match as the pipelines match them (any case): the Space README's example sends "sneaker".
        found = class_name_index(names, str(class_name))
        if found is not None:
            return [found] * n
        try:
            idx = _as_int(class_name, "class", 0, model.num_classes - 1)
        except gr.Error:
            raise gr.Error(f"Unknown class {class_name!r}. Choose one of: {', '.join(names)} "
                           f"(or an index 0-{model.num_classes - 1}).")
        return [idx] * n

    def _prompt(self, model: LoadedModel, prompt) -> Optional[str]:
        if model.kind != "text":
            return None
        prompt = (prompt or "").strip()
        if not prompt:
            raise gr.Error("This model is text-conditional: enter a prompt (e.g. "
                           f"\"{self.suggested_prompt(model)}\").")
        if len(prompt) > self.limits.max_prompt_chars:
            raise gr.Error(f"The prompt is {len(prompt)} characters long; the limit is {self.limits.max_prompt_chars}.")
        return prompt

    # --- the request handler -------------------------------------------------------------------------
    def generate(
        self,
        model_name: str,
        sampler: str,
        steps: float,
        guidance_scale: float,
        class_name: Optional[str],
        prompt: Optional[str],
        seed: float,
        num_images: float,
        animation: str = "off",
        frame_every: float = 0,
        progress=gr.Progress(),
        cancel: Optional[threading.Event] = None,
    ):
        """Sample images; returns (gallery items, trajectory GIF path or None, markdown summary).
        Once ``cancel`` is set, the sampling stops after the current step (raises ``RequestCancelled``)."""
        lim = self.limits
        steps, n, seed, guidance_scale = self._settings(steps, num_images, seed, guidance_scale)
        frame_every = _as_int(frame_every or 0, "Animation: frame every k steps", 0, lim.max_steps)
        if animation not in ANIMATIONS:
            raise gr.Error(f"Animation must be one of {', '.join(ANIMATIONS)}, got {animation!r}.")
        model = self._model(model_name)
        if sampler not in model.samplers:
            raise gr.Error(f"Sampler {sampler!r} is not available for {model.spec.label}. "
                           f"Choose one of: {'; '.join(model.samplers)}.")
        labels = self._labels(model, class_name, n)
        prompt = self._prompt(model, prompt)
        return self._guarded(cancel, self._run, model, sampler, steps, guidance_scale, labels, prompt, seed, n,
                             animation, frame_every, progress)

    def _settings(self, steps, num_images, seed, guidance_scale):
        lim = self.limits
        return (_as_int(steps, "Number of steps", 1, lim.max_steps),
                _as_int(num_images, "Number of images", 1, lim.max_images),
                _as_int(seed, "Seed", 0, MAX_SEED),
                _as_float(guidance_scale, "Guidance scale", 0.0, lim.max_guidance))

    def _guarded(self, cancel: Optional[threading.Event], work, *args):
        """``work(*args, cancel)`` as one request: counted in ``working`` while it runs, stopped between steps
        once ``cancel`` is set, and any failure turned into a ``gr.Error`` for this request only."""
        cancel = cancel or threading.Event()
        with self._lock:
            self._working.append(cancel)
        try:
            return work(*args, cancel)
        except (gr.Error, RequestCancelled):
            raise
        except ValueError as e:  # the library's own input checks
            logger.warning("rejected request: %s", e)
            raise gr.Error(f"Invalid settings: {e}")
        except Exception as e:  # anything else: this request fails, the app lives on
            logger.error("generation failed:\n%s", traceback.format_exc())
            raise gr.Error(f"Generation failed ({type(e).__name__}: {e}). The app is still running: "
                           "try again or with other settings.")
        finally:
            with self._lock:
                self._working.remove(cancel)

    # --- compare mode ------------------------------------------------------------------------------------
    def default_compare(self, model: LoadedModel) -> List[str]:
        """The comparison preselected for a model: its default sampler and the first sampler of another
        algorithm (two grids of one solver look alike): the one it was saved with, else ``COMPARE_WITH``,
        else the catalogue's next. A folder with optimized steps: its saved sampler, whatever its algorithm."""
        picks = [self.default_sampler(model)]
        first = solver_of(model.samplers[picks[0]].make())
        # A folder that carries optimized steps (hf_ddm.few_step) is compared as saved: those steps are its point.
        optimized = bool(getattr(model.pipe.scheduler.config, "optimized_timesteps", None))
        for label in [AS_SAVED, COMPARE_WITH, *model.samplers]:
            if len(picks) == MIN_COMPARE:
                break
            if label in model.samplers and label not in picks and (
                    solver_of(model.samplers[label].make()) != first or (label == AS_SAVED and optimized)):
                picks.append(label)
        return picks

    def sampler_name(self, model: LoadedModel, label: str) -> str:
        """What a sampler is called on screen: its label; "as saved" with the solver and grid it stands for."""
        if label != AS_SAVED:
            return label
        return f"as saved: {describe_saved(model.pipe.scheduler, model.samplers)}"

    def sampler_choices(self, model: LoadedModel) -> List[Tuple[str, str]]:
        """The menu: (name on screen, value) pairs; the value is the catalogue's key (what the API takes)."""
        return [(self.sampler_name(model, label), label) for label in model.samplers]

    def compare_choices(self, model_name):
        """UI callback: the compare multiselect follows the model's catalogue."""
        model = self._model(model_name)
        return gr.update(choices=self.sampler_choices(model), value=self.default_compare(model))

    def _compare_selection(self, model: LoadedModel, samplers) -> List[str]:
        hi = self.limits.max_compare
        if samplers is None or samplers == "":
            samplers = []
        elif isinstance(samplers, str):
            samplers = [samplers]
        elif not isinstance(samplers, (list, tuple)):
            raise gr.Error(f"{COMPARE_INPUT} must be a list of sampler names, got {samplers!r}.")
        chosen = []
        for label in samplers:
            if not isinstance(label, str) or label not in model.samplers:
                raise gr.Error(f"{COMPARE_INPUT}: unknown sampler {label!r} for {model.spec.label}. "
                               f"Choose from: {'; '.join(model.samplers)}.")
            if label in chosen:
                raise gr.Error(f"{COMPARE_INPUT}: {label!r} is chosen twice.")
            chosen.append(label)
        if not MIN_COMPARE <= len(chosen) <= hi:
            got = "none" if not chosen else str(len(chosen))
            raise gr.Error(f"{COMPARE_INPUT}: choose {MIN_COMPARE} to {hi} samplers, got {got}.")
        return chosen

    def compare(
        self,
        model_name: str,
        samplers: List[str],
        steps: float,
        guidance_scale: float,
        class_name: Optional[str],
        prompt: Optional[str],
        seed: float,
        num_images: float,
        progress=gr.Progress(),
        cancel: Optional[threading.Event] = None,
    ):
        """The same request (model, seed, class / prompt, steps, guidance, number of images) with each of 2-4
        samplers, one after the other in this request's slot. Returns (gallery items: one image grid per
        sampler, captioned "<sampler> · <NFE> NFE · <wall> s", markdown table). The per-request limits hold
        for each sampler's run; ``Limits.max_compare`` bounds the number of samplers."""
        steps, n, seed, guidance_scale = self._settings(steps, num_images, seed, guidance_scale)
        model = self._model(model_name)
        chosen = self._compare_selection(model, samplers)
        labels = self._labels(model, class_name, n)
        prompt = self._prompt(model, prompt)
        return self._guarded(cancel, self._compare_run, model, chosen, steps, guidance_scale, labels, prompt, seed,
                             n, progress)

    async def compare_cancellable(self, model_name, samplers, steps, guidance_scale, class_name, prompt, seed,
                                  num_images, progress=gr.Progress()):
        """The HTTP handler of ``compare``: cancelled like ``generate_cancellable``."""
        call = functools.partial(self.compare, model_name, samplers, steps, guidance_scale, class_name, prompt, seed,
                                 num_images, progress=progress)
        return await self._in_worker_thread(call)

    def _compare_run(self, model, chosen, steps, guidance_scale, labels, prompt, seed, n, progress,
                     cancel: threading.Event):
        progress(0.0, desc="preparing")
        k = len(chosen)
        gallery, rows = [], []
        for j, label in enumerate(chosen):
            def part(value, desc=None, j=j, label=label, **_):  # sampler j's progress as a share of the whole
                progress((j + value) / k, desc=f"sampler {j + 1}/{k} ({label}): {desc or ''}")

            arrays, nfe, wall, scheduler, _ = self._sample(model, label, steps, guidance_scale, labels, prompt, seed,
                                                           n, "off", 0, part, cancel)
            name = self.sampler_name(model, label)
            gallery.append((image_grid(arrays), f"{name} · {nfe} NFE · {wall:.2f} s"))
            rows.append(f"| {name} | `{type(scheduler).__name__}` | {nfe} | {wall:.2f} |")
        progress(1.0, desc="done")
        what = ""
        if labels is not None:
            names = model.class_names or []
            what = " · classes: " + ", ".join(dict.fromkeys(names[c] if names else f"class {c}" for c in labels))
        elif prompt is not None:
            what = f" · prompt: {prompt}"
        lines = [
            f"**{k} samplers**, each from the same {n} starting noise{'s' if n > 1 else ''} · {steps} steps requested · "
            f"NFE: model evaluations{self._per_call(model, guidance_scale)}",
            f"model: {model.spec.label} · " + self._request_line(model, guidance_scale, seed, n) + what,
            "",
            "| sampler | scheduler | model evaluations (NFE) | wall time (s) |",
            "|---|---|---|---|",
            *rows,
        ]
        if not model.trained:
            lines += ["", "⚠️ untrained demo weights: noise-like images are expected."]
        return gallery, "\n".join(lines)

    async def _in_worker_thread(self, call):
        """Run ``call(cancel=...)`` in a worker thread. Gradio cancels this coroutine when the client cancels or
        disconnects and frees the request's concurrency slot; a thread cannot be stopped from outside, so the
        cancellation is handed to it as an event that the step callback checks. Without this, a cancelled
        request kept sampling to the end while its slot served the next one, and the concurrency limit no
        longer bounded the work."""
        import anyio

        cancel = threading.Event()
        try:
            return await anyio.to_thread.run_sync(functools.partial(call, cancel=cancel), abandon_on_cancel=True)
        finally:
            cancel.set()  # cancelled (or done, when it changes nothing)

    async def generate_cancellable(self, model_name, sampler, steps, guidance_scale, class_name, prompt, seed,
                                   num_images, animation="off", frame_every=0, progress=gr.Progress()):
        """The HTTP handler: ``generate`` in a worker thread, stopped between steps once cancelled
        (``_in_worker_thread``)."""
        call = functools.partial(self.generate, model_name, sampler, steps, guidance_scale, class_name, prompt, seed,
                                 num_images, animation, frame_every, progress=progress)
        return await self._in_worker_thread(call)

    def _run(self, model, sampler_label, steps, guidance_scale, labels, prompt, seed, n, animation, frame_every,
             progress, cancel: threading.Event):
        progress(0.0, desc="preparing")
        arrays, nfe, wall, scheduler, state = self._sample(model, sampler_label, steps, guidance_scale, labels, prompt,
                                                           seed, n, animation, frame_every, progress, cancel)
        gallery = []
        for k, a in enumerate(arrays):
            what = ""
            if labels is not None:
                what = (model.class_names or [])[labels[k]] if model.class_names else f"class {labels[k]}"
            elif prompt is not None:
                what = prompt
            caption = f"{what} · seed {seed + k}" if what else f"seed {seed + k}"
            gallery.append((to_pil(a), caption))

        gif = None
        if animation != "off" and state["frames"]:
            gif = save_gif(state["frames"], state["captions"])
        progress(1.0, desc="done")

        lines = [
            f"**{n} image{'s' if n > 1 else ''} in {wall:.2f} s** (wall time) · "
            f"**{nfe} model evaluations**{self._per_call(model, guidance_scale)} · {steps} steps requested",
            f"model: {model.spec.label} · sampler: {self.sampler_name(model, sampler_label)} (`{type(scheduler).__name__}`) · "
            + self._request_line(model, guidance_scale, seed, n),
        ]
        if not model.trained:
            lines.append("⚠️ untrained demo weights: noise-like images are expected.")
        return gallery, gif, "  \n".join(lines)

    @staticmethod
    def _interval(model) -> str:
        """The folder's saved guidance interval as the page writes it ("σ ≤ 4"); "" for every level."""
        return describe_interval(getattr(model.pipe.config, "default_guidance_interval", None))

    @staticmethod
    def _per_call(model, guidance_scale) -> str:
        interval = SpaceApp._interval(model)
        which = f"those at {interval}" if interval else "each"
        if model.kind in ("class", "text") and guidance_scale not in (0.0, 1.0):
            return f" ({which} a batched call over the conditional and unconditional branch)"
        if model.kind == "guided" and guidance_scale != 0.0:
            return " (each plus one classifier gradient)"
        return ""

    @staticmethod
    def _request_line(model, guidance_scale, seed, n) -> str:
        line = f"seed {seed}" + (f"…{seed + n - 1}" if n > 1 else "")
        if model.kind != "unconditional":
            line += f" · guidance scale {guidance_scale:g}"
            interval = SpaceApp._interval(model)
            if interval and guidance_scale != 1.0:  # the folder's interval: scale 1 outside it
                line += f" at {interval}"
        return line

    def _sample(self, model, sampler_label, steps, guidance_scale, labels, prompt, seed, n, animation, frame_every,
                progress, cancel: threading.Event):
        """One sampling run: (uint8 images (n, H, W, C), model evaluations, wall seconds, scheduler, animation
        state). Image k starts from the noise of seed + k, whatever the sampler."""
        scheduler = model.samplers[sampler_label].make()
        pipe = model.pipeline_with(scheduler)
        unet = pipe.unet
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (n, unet.config.in_channels, *size)
        generators = [torch.Generator().manual_seed(seed + k) for k in range(n)]
        noise = randn_tensor(shape, generator=generators, dtype=unet.dtype)
        # What the pipeline's prepare_latents will start from (the first frame of the x_t animation).
        state = {"x": noise * scheduler.init_noise_sigma, "frames": [], "captions": [], "every": None}
        vae = getattr(pipe, "vae", None)

        def decode(z: torch.Tensor) -> np.ndarray:
            if vae is not None:
                z = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample
            return to_uint8(z)

        if animation == "noisy sample x_t":
            state["frames"].append(frame_strip(decode(state["x"])))
            state["captions"].append("x_T (noise)")

        def on_step(p, i, t, tensors):
            if cancel.is_set():
                raise RequestCancelled(f"cancelled after step {i + 1}")
            total = len(p.scheduler.timesteps)
            progress((i + 1) / total, desc=f"denoising: model evaluation {i + 1}/{total}")
            if animation != "off":
                if state["every"] is None:
                    k = frame_every or math.ceil(total / 16)
                    state["every"] = max(k, math.ceil(total / max(1, self.limits.max_frames - 1)))
                if i % state["every"] == 0 or i == total - 1:
                    self._capture(i, tensors, state, animation, decode, total)
            return {}

        t0 = time.perf_counter()
        # The x0 frames are the pipeline's pred_original_sample: the model adapter's conversion of each output.
        wanted = ["latents", "pred_original_sample"] if animation == "x0-prediction" else ["latents"]
        kwargs = dict(batch_size=n, generator=generators, num_inference_steps=steps, latents=noise, output_type="pt",
                      callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=wanted)
        if model.kind == "guided":
            kwargs.update(class_labels=labels, guidance_scale=guidance_scale)
        elif model.kind == "class":
            kwargs.update(class_labels=labels, guidance_scale=guidance_scale)
        elif model.kind == "text":
            kwargs.update(prompt=prompt, guidance_scale=guidance_scale)
        images = pipe(**kwargs).images  # (n, C, H, W) in [0, 1]
        wall = time.perf_counter() - t0
        nfe = pipe.num_model_evaluations

        arrays = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return arrays, nfe, wall, scheduler, state

    @staticmethod
    def _capture(i, tensors, state, animation, decode, total):
        x = tensors["latents"]
        caption = f"step {i + 1}/{total}: x_t"
        if animation == "x0-prediction":
            x = tensors["pred_original_sample"]
            caption = f"step {i + 1}/{total}: x0-prediction"
        if i == total - 1 and animation == "noisy sample x_t":
            caption = f"step {total}/{total}: sample"
        state["frames"].append(frame_strip(decode(x)))
        state["captions"].append(caption)

    # --- UI callbacks --------------------------------------------------------------------------------
    def on_model_change(self, model_name):
        model = self._model(model_name)
        classes = self.class_choices(model)
        guided = model.kind in ("class", "text", "guided")
        guidance_info = {
            "class": "classifier-free guidance w: 0 unconditional, 1 conditional, >1 sharper",
            "text": "classifier-free guidance w: 0 unconditional, 1 conditional, >1 sharper",
            "guided": "classifier scale s: 0 ignores the classifier, 1 = p(x|y), >1 sharper",
        }.get(model.kind, "not used: this model is unconditional")
        return (
            gr.update(choices=self.sampler_choices(model), value=self.default_sampler(model)),
            gr.update(value=self.default_steps(model)),
            gr.update(choices=classes, value=classes[0] if classes else None, visible=bool(classes)),
            gr.update(visible=model.kind == "text", value=self.suggested_prompt(model)),
            gr.update(interactive=guided, info=guidance_info, value=self.default_guidance(model)),
            self.model_status(model),
        )


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------

CSS = """
#banner {background: #fff4e5; border: 1px solid #f0b45a; border-radius: 8px; padding: 4px 12px;}
"""


def build_demo(app: Optional[SpaceApp] = None, default_model: str = "ddpm", preload: bool = True) -> gr.Blocks:
    app = app or SpaceApp()
    lim = app.limits
    if preload:
        app.registry.load_all()
    model = app.registry.get(default_model)
    classes = app.class_choices(model)

    with gr.Blocks(title="hf_ddm diffusion demo", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# hf_ddm: diffusion samplers side by side\n"
            "Pick a model and a sampler, and watch the denoising, or compare 2-4 samplers on the same seed. Models, schedulers and pipelines come from "
            "**hf_ddm**, a plug-in package for 🤗 diffusers: DDPM/DDIM, SMLD, "
            "continuous VP/sub-VP/VE SDEs with reverse-SDE, probability-flow ODE and predictor-corrector "
            "samplers, diffusers' DPM-Solver++ and UniPC; latent diffusion, classifier-free and classifier "
            "guidance."
        )
        banner = app.banner()
        gr.Markdown(banner, elem_id="banner", visible=bool(banner))
        with gr.Row():
            with gr.Column(scale=2):
                model_dd = gr.Dropdown(app.model_choices(), value=default_model, label="Model", elem_id="model")
                status = gr.Markdown(app.model_status(model), elem_id="model-status")
                sampler_dd = gr.Dropdown(app.sampler_choices(model), value=app.default_sampler(model), label="Sampler",
                                         allow_custom_value=True)
                with gr.Row():
                    steps = _checked_by_the_app(gr.Slider(1, lim.max_steps, value=app.default_steps(model), step=1, label="Steps",
                                      info=f"1-{lim.max_steps}; Heun and predictor-corrector use 2 evaluations/step",
                                      elem_id="steps"))
                    num_images = _checked_by_the_app(gr.Slider(1, lim.max_images, value=lim.default_images, step=1,
                                           label="Number of images", elem_id="num-images"))
                class_dd = gr.Dropdown(classes, value=classes[0] if classes else None, label="Class",
                                       visible=bool(classes), allow_custom_value=True, elem_id="class")
                prompt = gr.Textbox(app.suggested_prompt(model), label="Prompt", visible=model.kind == "text",
                                    max_lines=1, placeholder="a photo of a sneaker", elem_id="prompt")
                guidance = _checked_by_the_app(gr.Slider(0.0, lim.max_guidance, value=app.default_guidance(model), step=0.5, label="Guidance scale",
                                     interactive=model.kind != "unconditional"))
                seed = _checked_by_the_app(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                 info="image k uses seed + k"))
                with gr.Accordion("Denoising animation", open=False, elem_id="animation-accordion"):
                    animation = gr.Radio(list(ANIMATIONS), value="off", label="Animate", elem_id="animation")
                    frame_every = _checked_by_the_app(gr.Slider(0, lim.max_steps, value=0, step=1, label="Frame every k steps",
                                            info=f"0 = automatic; at most {lim.max_frames} frames"))
                run = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Accordion("Compare samplers", open=False, elem_id="compare-accordion"):
                    compare_dd = gr.Dropdown(app.sampler_choices(model), value=app.default_compare(model), multiselect=True,
                                             max_choices=lim.max_compare, label=COMPARE_INPUT, elem_id="compare-samplers",
                                             info=f"{MIN_COMPARE}-{lim.max_compare}: each runs the settings above "
                                                  "(seed, class / prompt, steps, guidance, number of images)")
                    compare_btn = gr.Button("Compare", variant="secondary", elem_id="compare-btn")
            with gr.Column(scale=3):
                # Height follows the rows: a fixed height hid every row after the first.
                gallery = gr.Gallery(label="Samples", columns=5, height="auto", elem_id="gallery", format="png")
                info = gr.Markdown(elem_id="run-info")
                trajectory = gr.Image(label="Denoising trajectory (GIF)", type="filepath", format="gif",
                                      elem_id="trajectory", interactive=False)
                compare_gallery = gr.Gallery(label="Sampler comparison (one grid per sampler)", columns=4,
                                             height="auto", elem_id="compare-gallery", format="png",
                                             object_fit="contain")
                compare_info = gr.Markdown(elem_id="compare-info")

        model_dd.change(app.on_model_change, inputs=model_dd,
                        outputs=[sampler_dd, steps, class_dd, prompt, guidance, status],
                        api_name=False, concurrency_limit=None, show_progress="hidden")
        run.click(app.generate_cancellable,
                  inputs=[model_dd, sampler_dd, steps, guidance, class_dd, prompt, seed, num_images, animation,
                          frame_every],
                  outputs=[gallery, trajectory, info], api_name="generate", concurrency_limit="default",
                  concurrency_id="sampling", show_progress_on=[gallery])  # one bar, over the images it makes
        model_dd.change(app.compare_choices, inputs=model_dd, outputs=compare_dd, api_name=False,
                        concurrency_limit=None, show_progress="hidden")
        # One concurrency group with /generate: lim.concurrency bounds the sampling requests of both kinds.
        compare_btn.click(app.compare_cancellable,
                          inputs=[model_dd, compare_dd, steps, guidance, class_dd, prompt, seed, num_images],
                          outputs=[compare_gallery, compare_info], api_name="compare", concurrency_limit="default",
                          concurrency_id="sampling", show_progress_on=[compare_gallery])
        gr.Markdown(
            f"Limits per request: {lim.max_images} images, {lim.max_steps} steps, guidance ≤ {lim.max_guidance:g}, "
            f"{lim.max_compare} samplers in a comparison; "
            f"{lim.concurrency} requests run at once, {lim.max_queue} may wait. "
            "Model evaluations count U-Net calls per image batch (a classifier-free-guided call evaluates both "
            "branches in one batch)."
        )
    demo.queue(default_concurrency_limit=lim.concurrency, max_size=lim.max_queue)
    return demo


__all__ = ["SpaceApp", "RequestCancelled", "Limits", "build_demo", "image_grid", "CYCLE", "ANIMATIONS", "CSS",
           "COMPARE_INPUT", "MIN_COMPARE"]
