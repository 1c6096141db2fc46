"""Copy a trained pipeline folder into the Space as a shipped checkpoint: fp16 weights (the Space loads
them as float32), the training model card extended with hardware, wall time, the recipe command and the
evaluation results, and the last validation grid.

    python train/ship_checkpoint.py RUN_DIR space/models/NAME --command "bash train/fashion_mnist_recipe.sh ..." \
        [--eval results.json ...] [--extra_runs VAE_RUN_DIR ...] [--component_card vae=VAE_RUN_DIR] \
        [--component_eval vae=eval_vae.json]

``--component_card`` gives a component its own model card (the card its training run wrote, with the
usage line pointing at the subfolder, plus its own ``--component_eval`` results), so e.g. the VAE inside an
LDM folder is documented where it lies.

    python train/ship_checkpoint.py --refresh space/models/NAME [--dataset zalando-datasets/fashion_mnist]

re-saves a shipped folder with the installed hf_ddm and rebuilds its cards' metadata and loading snippet,
keeping their text. Shipped folders carry no copy of hf_ddm's code (their pipeline file imports the installed
class), so a change to the library needs no refresh; ``python -m hf_ddm.portable FOLDER DEST`` writes the
portable copy that is published.

    python train/ship_checkpoint.py --refresh space/models/NAME --vae VAE_RUN_DIR --command "..." \
        [--component_eval vae=eval_vae.json]

also replaces the folder's VAE by a decoder fine-tuned with ``train_vae.py --train_decoder_only``: refused
unless its encoder and scaling_factor equal the shipped VAE's (the latent model was trained on those latents);
the VAE gets the run's card, the folder's card a line saying what changed.

    python train/ship_checkpoint.py --refresh space/models/NAME --unet DIR --command "..."

replaces the folder's U-Net by DIR's (a UNet folder or a pipeline folder) when their configs are equal, e.g.
the class LDM's continued U-Net into the classifier-guided folder that samples its null branch. With ``--refresh``, ``--eval
JSON ...`` replaces the card's Evaluation section (after a swap, the folder's new measurements). Either way the cards go through ``huggingface_hub.ModelCard``
(library, task, datasets, tags, license) and no card or config names a path of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
from typing import Optional

import torch
from diffusers import DiffusionPipeline

import hf_ddm.pipelines as pipelines
from hf_ddm.catalogue import schedule_config
from hf_ddm.guidance import describe_interval
from hf_ddm.models.unet import UNet
from hf_ddm.models.vae import VAE
from hf_ddm.schedulers.sde import SDEScheduler
from hf_ddm.training.hub import build_card, card_metadata, model_usage, pipeline_usage

# The data of the shipped checkpoints: Debian's dataset-fashion-mnist, the same images as this Hub dataset.
FASHION_MNIST = "zalando-datasets/fashion_mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Where the shipped runs were trained, and what the recipe calls that folder by default (WORK=runs/fmnist).
TRAINED_IN = {"/work/ckpt": "runs/fmnist"}


METRIC_KEYS = ("scheduler", "steps", "guidance_scale", "guidance_interval", "num_samples", "fd", "fd_inf", "precision",
               "recall", "density", "coverage", "class_accuracy", "bits_per_dim", "reference_version", "mse_per_pixel", "psnr_db",
               "kl_nats_per_image", "fd_reconstructions_vs_test")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?")
    p.add_argument("dest", nargs="?")
    p.add_argument("--refresh", metavar="SHIPPED_DIR", help="re-save a shipped folder and rebuild its cards")
    p.add_argument("--dataset", default=FASHION_MNIST, help="Hub dataset id for the cards' metadata")
    p.add_argument("--command", help="the command that trained it (goes into the card)")
    p.add_argument("--eval", nargs="*", default=[], help="eval_quality / eval_vae JSON files")
    p.add_argument("--scheduler", metavar="JSON",
                   help="save this recommended sampler instead of the run's scheduler: SDEScheduler keyword "
                        "arguments on the model's own discrete schedule, e.g. "
                        "'{\"solver\": \"multistep\", \"time_grid\": \"uniform\", \"denoise_final\": false}'")
    p.add_argument("--default_guidance_scale", type=float, metavar="SCALE",
                   help="the guidance scale a call without one uses (model_index.json), the one the folder's "
                        "evaluations recommend; also with --refresh")
    p.add_argument("--default_guidance_interval", nargs=2, metavar=("LOW", "HIGH"),
                   help="the noise levels sigma a call without guidance_interval guides in (model_index.json; HIGH "
                        "inf: no upper end; 0 inf: every level), the interval its evaluations recommend; also with "
                        "--refresh")
    p.add_argument("--note", nargs="*", default=[], metavar="TEXT",
                   help="more lines for the card's \"How this checkpoint was made\" (e.g. which folders share a part)")
    p.add_argument("--extra_runs", nargs="*", default=[], help="runs of other stages (their train_summary.json)")
    p.add_argument("--component_card", nargs="*", default=[], metavar="NAME=RUN_DIR",
                   help="write RUN_DIR's model card into the component subfolder NAME")
    p.add_argument("--component_eval", nargs="*", default=[], metavar="NAME=JSON",
                   help="evaluation results listed in component NAME's card")
    p.add_argument("--vae", metavar="VAE_RUN_DIR",
                   help="with --refresh: swap in this decoder fine-tune of the folder's VAE (same encoder)")
    p.add_argument("--unet", metavar="DIR",
                   help="with --refresh: swap in this U-Net (a UNet folder, or a pipeline folder's unet/) of the "
                        "same architecture, e.g. the class LDM's continued U-Net into the guided folder")
    args = p.parse_args(argv)
    for flag, value in (("--vae", args.vae), ("--unet", args.unet)):
        if value and not (args.refresh and args.command):
            p.error(f"{flag} goes with --refresh SHIPPED_DIR and the --command that trained it")
    missing = [path for path in args.eval or [] if not os.path.isfile(path)]
    if missing:
        p.error(f"--eval: no such file: {', '.join(missing)}")
    if args.refresh:
        return refresh(args.refresh, args.dataset, args.vae, args.command, _pairs(args.component_eval, "--component_eval"),
                       args.eval, unet_dir=args.unet, guidance_scale=args.default_guidance_scale,
                       guidance_interval=args.default_guidance_interval)
    if not (args.run_dir and args.dest and args.command):
        p.error("give RUN_DIR DEST --command ..., or --refresh SHIPPED_DIR")

    save_shipped(args.run_dir, args.dest, json.loads(args.scheduler) if args.scheduler else None,
                 guidance_scale=args.default_guidance_scale, guidance_interval=args.default_guidance_interval)
    card_path = os.path.join(args.run_dir, "README.md")
    card = open(card_path).read() if os.path.exists(card_path) else f"# {os.path.basename(args.dest)}\n"
    name = os.path.basename(args.dest.rstrip("/"))
    card = card.replace(args.run_dir.rstrip("/"), name)
    # the card names the folder it ships as, not the run it came from (ldm_class_vae8 ships as ldm_class)
    card = re.sub(r"^# .*$", lambda _: f"# {name}", card, count=1, flags=re.M)
    lines = ["", "## How this checkpoint was made", "", f"- command: `{args.command}`",
             f"- hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
             f"(torch {torch.__version__})", "- weights stored as float16 (the Space and `dtype=torch.float32` "
             "loading upcast them)", "- images: Fashion-MNIST 28x28 padded with the background to 32x32"]
    summaries = [(os.path.basename(run.rstrip("/")), json.load(open(os.path.join(run, "train_summary.json"))))
                 for run in [args.run_dir, *args.extra_runs] if os.path.exists(os.path.join(run, "train_summary.json"))]
    tasks = [s.get("task", run) for run, s in summaries]
    for (run, s), task in zip(summaries, tasks):  # a continued run and its start share a task: name their runs
        lines.append(f"- {task}{f' ({run})' if tasks.count(task) > 1 else ''}: {_steps_and_time(s)}")
    lines += [f"- {note}" for note in args.note]
    lines += eval_lines(args.eval)
    own = os.path.join(args.run_dir, "train_summary.json")
    grid = json.load(open(own)).get("sample_grid") if os.path.exists(own) else None
    if grid and os.path.exists(os.path.join(args.run_dir, grid)):
        os.makedirs(os.path.join(args.dest, "samples"), exist_ok=True)
        shutil.copyfile(os.path.join(args.run_dir, grid), os.path.join(args.dest, grid))
    with open(os.path.join(args.dest, "README.md"), "w") as f:
        f.write(card.rstrip() + "\n" + "\n".join(lines) + "\n")
    write_component_cards(args)
    finish_cards(args.dest, args.dataset)
    print("shipped", args.dest)


def same_latent_space(shipped: VAE, tuned: VAE) -> None:
    """Refuse a VAE whose encoder or latent scale differ from ``shipped``'s (compared at the shipped float16)."""
    if tuned.config.scaling_factor != shipped.config.scaling_factor:
        raise SystemExit(f"--vae: scaling_factor {tuned.config.scaling_factor} != the shipped "
                         f"{shipped.config.scaling_factor}: not a decoder fine-tune of this VAE")
    old, new = shipped.state_dict(), tuned.state_dict()
    for name in VAE.ENCODER_PARTS:
        keys = [k for k in old if k.split(".")[0] == name]
        if any(k not in new or not torch.equal(old[k].half(), new[k].half()) for k in keys):
            raise SystemExit(f"--vae: its {name} differs from the shipped VAE's: the latent model would be fed "
                             "latents it was not trained on (fine-tune with train_vae.py --train_decoder_only)")


def same_architecture(shipped: UNet, other: UNet) -> None:
    """Refuse a U-Net whose config differs from ``shipped``'s (the folder's pipeline, cards and
    evaluations describe that architecture and conditioning)."""
    a, b = dict(shipped.config), dict(other.config)
    differ = sorted(k for k in set(a) | set(b) if not k.startswith("_") and a.get(k) != b.get(k))
    if differ:
        raise SystemExit("--unet: its config differs from the shipped U-Net's in " + ", ".join(
            f"{k} ({b.get(k)!r} != {a.get(k)!r})" for k in differ))


def _unet_folder(path: str) -> str:
    """A UNet folder itself, or a pipeline folder's unet/ subfolder."""
    sub = os.path.join(path, "unet")
    return sub if os.path.isfile(os.path.join(sub, "config.json")) else path


def save_shipped(src: str, dest: str, scheduler_kwargs: Optional[dict] = None, vae_dir: Optional[str] = None,
                 unet_dir: Optional[str] = None, guidance_scale: Optional[float] = None,
                 guidance_interval=None) -> None:
    """``src`` loaded with the installed hf_ddm class and saved to ``dest`` as float16, ``portable=False``
    without even the one-import pipeline file that save writes (weights, configs, cards: no code;
    ``python -m hf_ddm.portable`` writes the copy that is published), with no local ``_name_or_path``. ``scheduler_kwargs``: save
    ``SDEScheduler(**scheduler_kwargs)`` on the model's own discrete schedule (its recommended sampler).
    ``vae_dir``: a decoder fine-tune of the folder's VAE to ship instead of it; ``unet_dir``: a U-Net of the
    same architecture to ship instead of the folder's; ``guidance_scale``: its ``default_guidance_scale``;
    ``guidance_interval``: its ``default_guidance_interval``."""
    index = DiffusionPipeline.load_config(src)
    cls = getattr(pipelines, index["_class_name"][1])
    pipe = cls.from_pretrained(src)
    if vae_dir is not None:
        tuned = VAE.from_pretrained(vae_dir)
        same_latent_space(pipe.vae, tuned)
        pipe.register_modules(vae=tuned)
    if unet_dir is not None:
        other = UNet.from_pretrained(_unet_folder(unet_dir))
        same_architecture(pipe.unet, other)
        pipe.register_modules(unet=other)
    if scheduler_kwargs is not None:
        trained = pipe.scheduler
        if isinstance(trained, SDEScheduler) and not trained.is_discrete_schedule:
            # a continuous SDE (VE, VP, sub-VP): its process and parameters are the model's, only the solver changes
            pipe.scheduler = SDEScheduler.from_config(trained.config, **scheduler_kwargs)
        else:
            # hf_ddm's default grid unless the kwargs name one (not the trained config's diffusers spacing)
            pipe.scheduler = SDEScheduler.from_config(schedule_config(trained.config),
                                                      **{"time_grid": "log_snr", **scheduler_kwargs})
    if guidance_scale is not None:
        if "default_guidance_scale" not in pipe.config:
            raise ValueError(f"--default_guidance_scale: {type(pipe).__name__} has no guidance (an unconditional model)")
        pipe.register_default_guidance_scale(guidance_scale)
    if guidance_interval is not None:
        if "default_guidance_interval" not in pipe.config:
            raise ValueError(f"--default_guidance_interval: {type(pipe).__name__} has no guidance (an unconditional model)")
        pipe.register_default_guidance_interval(guidance_interval)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    pipe.to(torch.float16).save_pretrained(dest, portable=False)
    # The repository's folders hold no code at all: the installed class loads them (the Space, the cards'
    # snippet), and `python -m hf_ddm.portable` generates the code a published copy carries.
    with open(os.path.join(dest, "model_index.json")) as f:
        os.remove(os.path.join(dest, json.load(f)["_class_name"][0] + ".py"))


def refresh(folder: str, dataset: str, vae_dir: Optional[str] = None, command: Optional[str] = None,
            component_evals: Optional[dict] = None, evals=(), unet_dir: Optional[str] = None,
            guidance_scale: Optional[float] = None, guidance_interval=None) -> int:
    """Re-save a shipped folder in place (weights unchanged: float16 -> float32 -> float16 is exact) and
    rebuild its cards; samples and cards are kept (the VAE's replaced when ``vae_dir`` swaps it in, the U-Net
    when ``unet_dir`` does; the card's Evaluation section by ``evals`` when given)."""
    folder = folder.rstrip("/")
    keep = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if vae_dir and rel.split(os.sep)[0] == "vae":
                continue
            if name == "README.md" or rel.split(os.sep)[-2:-1] == ["samples"]:
                keep[rel] = open(os.path.join(root, name), "rb").read()
    tmp = tempfile.mkdtemp(prefix=".refresh-", dir=os.path.dirname(os.path.abspath(folder)))
    try:
        save_shipped(folder, os.path.join(tmp, "out"), vae_dir=vae_dir, unet_dir=unet_dir, guidance_scale=guidance_scale,
                     guidance_interval=guidance_interval)
        for rel, data in keep.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, "out", rel)), exist_ok=True)
            with open(os.path.join(tmp, "out", rel), "wb") as f:
                f.write(data)
        shutil.rmtree(folder)
        os.rename(os.path.join(tmp, "out"), folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    card_path = os.path.join(folder, "README.md")
    if vae_dir:
        write_component_card(folder, "vae", vae_dir, (component_evals or {}).get("vae", []))
        _note_decoder_swap(card_path, vae_dir, command)
    if unet_dir:
        _note_unet_swap(card_path, unet_dir, command)
    if evals:
        _edit_card(card_path, lambda text: replace_section(text, "Evaluation", "\n".join(eval_lines(evals)[3:]),
                                                            missing_at_end=True))
    finish_cards(folder, dataset)
    print("refreshed", folder)
    return 0


def public_text(text: str) -> str:
    """Card text without paths of the machine that trained the checkpoint: the training folder becomes
    the recipe's default, the Debian dataset folder its name; any other absolute path its last component."""
    for local, public in TRAINED_IN.items():
        text = text.replace(f"WORK={local} ", "").replace(local, public)
    text = re.sub(r"idx:" + re.escape(FASHION_MNIST_DIR) + r":(\w+)", r"fashion-mnist (local IDX files, split \1)", text)
    text = text.replace(FASHION_MNIST_DIR, "fashion-mnist")
    return ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/")), text)


# An absolute POSIX path: a "/" not preceded by a word character, a dot, ":" or "/" (so not a relative path,
# not a URL), then at least one more component.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/<-])/(?:[\w.-]+/)+[\w.-]*")


def _call_example(index: dict, unet_config: dict) -> tuple:
    """(pipeline_tag, the call of the card's snippet) for a saved pipeline folder."""
    names = index.get("class_names") or []
    # A folder with a default_guidance_scale uses it without being told: the snippet shows that.
    default = index.get("default_guidance_scale")
    if unet_config.get("cross_attention_dim"):
        scale = "" if default is not None else "guidance_scale=3.0, "
        return "text-to-image", f'prompt="a photo of a sneaker", {scale}'
    if names and (unet_config.get("num_class_embeds") or "classifier" in index):
        label = "Sneaker" if "Sneaker" in names else names[0]
        scale = "" if default is not None else f"guidance_scale={10.0 if 'classifier' in index else 3.0}, "
        return "unconditional-image-generation", f'class_labels=["{label}"] * 2, {scale}'
    return "unconditional-image-generation", "batch_size=4, "


def _edit_card(path: str, edit) -> None:
    with open(path) as f:
        text = edit(f.read())  # before the card is opened for writing: an edit that fails leaves it whole
    with open(path, "w") as f:
        f.write(text)


def _trained_for(run: str) -> str:
    """", N steps, M min of training" from ``run``'s train_summary.json (nothing for a folder without one)."""
    path = os.path.join(run, "train_summary.json")
    if not os.path.exists(path):
        return ""
    return ", " + _steps_and_time(json.load(open(path)))


def _steps_and_time(summary: dict) -> str:
    """"N steps, M min of training": all the run's steps over resumed runs (``train_seconds``). Summaries
    written before hf_ddm recorded that have only the last run's time, and say so when the run was resumed."""
    steps, total = summary.get("global_step"), summary.get("train_seconds")
    this_run = summary.get("train_seconds_this_run", 0) / 60
    if total is not None:
        return f"{steps} steps, {total / 60:.1f} min of training"
    if "train_seconds" in summary:  # resumed from a checkpoint that did not record its time
        return f"{steps} steps, {this_run:.1f} min of training in its last run (earlier runs' time not recorded)"
    return f"{steps} steps, {this_run:.1f} min of training"


def _note_decoder_swap(card_path: str, vae_dir: str, command: Optional[str]) -> None:
    """One line under "How this checkpoint was made" saying which decoder the folder now carries."""
    _add_made_note(card_path, "- VAE decoder fine-tuned afterwards",
                   f" (encoder and latents unchanged, the latent model not retrained): `{command}`"
                   f"{_trained_for(vae_dir)}; its card: `vae/README.md`")


def _note_unet_swap(card_path: str, unet_dir: str, command: Optional[str]) -> None:
    """One line under "How this checkpoint was made" saying which U-Net the folder now carries."""
    _add_made_note(card_path, "- U-Net replaced afterwards",
                   f" (same architecture): `{command}`{_trained_for(unet_dir)}")


def _add_made_note(card_path: str, prefix: str, rest: str) -> None:
    """Put ``prefix + rest`` last under "How this checkpoint was made", replacing an earlier line with
    that prefix (a second swap of the same part replaces its note)."""
    def edit(text):
        text = re.sub(rf"^{re.escape(prefix)}.*\n", "", text, flags=re.M)
        made = re.search(r"^## How this checkpoint was made\n\n(?:- .*\n(?:  .*\n)*)*", text, re.M)
        at = made.end() if made else len(text)
        return text[:at] + prefix + rest + "\n" + text[at:]

    _edit_card(card_path, edit)


def replace_section(text: str, heading: str, body: str, missing_at_end: bool = False) -> str:
    """Replace section ``heading``'s body; a missing section goes under the title (or last: ``missing_at_end``)."""
    section = re.compile(rf"(^## {re.escape(heading)}\n\n)(.*?)(?=^## |\Z)", re.S | re.M)
    if section.search(text):
        return section.sub(lambda m: m.group(1) + body.strip() + "\n\n", text, count=1)
    if missing_at_end:
        return text.rstrip() + f"\n\n## {heading}\n\n{body.strip()}\n"
    title = re.search(r"^# .*\n", text, re.M)
    at = title.end() if title else 0
    return text[:at] + f"\n## {heading}\n\n{body.strip()}\n\n" + text[at:].lstrip("\n")


def finish_cards(folder: str, dataset: str) -> None:
    """The shipped folder's card (and each component card) through ModelCard: Hub metadata from what the
    folder holds, the loading snippet that works from the repository root, text without machine paths."""
    from huggingface_hub import ModelCard

    folder = folder.rstrip("/")
    repo = folder if not os.path.isabs(folder) else os.path.basename(folder)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    unet_config = json.load(open(os.path.join(folder, "unet", "config.json")))
    tag, call = _call_example(index, unet_config)
    kind = {"PixelDiffusionPipeline": "pixel-diffusion", "LatentDiffusionPipeline": "latent-diffusion",
            "ClassifierGuidedPipeline": "classifier-guidance"}[index["_class_name"][1]]
    scheduler = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))["_class_name"]
    usage = pipeline_usage(repo, call, pipeline_class=index["_class_name"][1])
    if index.get("default_guidance_scale") is not None:
        usage += (f"\n\nWithout `guidance_scale` the pipeline uses {index['default_guidance_scale']:g}, this folder's "
                  "`default_guidance_scale` (model_index.json): the scale its evaluations recommend.\n")
    interval = describe_interval(index.get("default_guidance_interval"))
    if interval:
        usage += (f"\nIt guides only at noise levels {interval} (σ: noise over signal), this "
                  "folder's `default_guidance_interval`, and at scale 1 elsewhere, the plain conditional model (guidance at "
                  "the highest noise levels costs diversity); `guidance_interval=(0, None)` guides at every level.\n")
    cards = {"": (tag, ["fashion-mnist", kind, f"scheduler-{scheduler}"], usage)}
    for component in ("vae", "classifier"):
        if os.path.isfile(os.path.join(folder, component, "README.md")):
            cls = {"vae": ("hf_ddm.models.vae", "VAE"), "classifier": ("hf_ddm.models.classifier", "NoisyClassifier")}
            cards[component] = (None, ["fashion-mnist", component], model_usage(repo, *cls[component], component))
    for sub, (pipeline_tag, tags, usage) in cards.items():
        path = os.path.join(folder, sub, "README.md")
        old = ModelCard.load(path) if os.path.exists(path) else None
        text = old.text if old is not None else f"# {os.path.basename(folder)}\n"
        old_tags = [t for t in ((old.data.tags or []) if old is not None else [])
                    if t not in ("training",) and not t.startswith("scheduler-")]  # the folder's scheduler may change
        meta = card_metadata(pipeline_tag=pipeline_tag, tags=[*old_tags, *tags], datasets=[dataset])
        text = replace_section(public_text(text), "Usage", usage)
        title = re.search(r"^# (.*)$", text, re.M)
        body = text[title.end():] if title else text
        card = build_card(meta, title.group(1) if title else os.path.basename(folder), {})
        card.text = card.text.rstrip() + "\n\n" + body.strip() + "\n"
        card.save(path)


def eval_lines(paths):
    if not paths:
        return []
    lines = ["", "## Evaluation", ""]
    for path in paths:
        res = json.load(open(path))
        keep = {k: res[k] for k in METRIC_KEYS if res.get(k) is not None}
        lines.append(f"- `{os.path.basename(path)}`: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items()))
        if res.get("command"):
            lines.append(f"  (`{res['command']}`)")
    return lines


def _pairs(items, flag):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {item!r}")
        out.setdefault(name, []).append(value)
    return out


def write_component_cards(args):
    evals = _pairs(args.component_eval, "--component_eval")
    for name, (run,) in _pairs(args.component_card, "--component_card").items():
        write_component_card(args.dest, name, run, evals.get(name, []))


def write_component_card(dest: str, name: str, run: str, evals) -> None:
    """``run``'s model card (and last sample grid) into component ``name`` of shipped folder ``dest``."""
    dest_name = os.path.basename(dest.rstrip("/"))
    folder = os.path.join(dest, name)
    if not os.path.isdir(folder):
        raise SystemExit(f"--component_card {name}=...: {dest} has no component folder {name!r}")
    card = open(os.path.join(run, "README.md")).read()
    card = card.replace(f'"{run.rstrip("/")}"', f'"{dest_name}", subfolder="{name}"')
    card = card.replace(run.rstrip("/"), f"{dest_name}/{name}")
    summary = os.path.join(run, "train_summary.json")
    grid = json.load(open(summary)).get("sample_grid") if os.path.exists(summary) else None
    if grid and os.path.exists(os.path.join(run, grid)):
        os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
        shutil.copyfile(os.path.join(run, grid), os.path.join(folder, grid))
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(card.rstrip() + "\n" + "\n".join(eval_lines(evals)) + "\n")


if __name__ == "__main__":
    main()
