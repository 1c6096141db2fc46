"""The Hub side of a training run, as diffusers' example scripts do it: the repo is created (token and
reachability checked) before the first step, checkpoints are optionally uploaded as they are written,
and the finished folder goes up with a model card built by ``huggingface_hub.ModelCard``.

Nothing written here names a path of the training machine: local paths become their last component
(``public_path``), Hub ids stay as they are.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from ..pipeline_utils import INSTALL_HINT, is_hub_id
from .args import ConfigError

# Left out of every upload of the run folder: resumable state, logs, caches, half-written files.
UPLOAD_IGNORE = ["checkpoint-*/**", ".tmp-checkpoint-*/**", ".del-checkpoint-*/**", "logs/**", "*.tmp*",
                 "latent_cache/**"]


def public_path(value) -> Optional[str]:
    """``value`` as it may appear in a card or log: a Hub id unchanged, a local path as its last component."""
    if value is None or not isinstance(value, str) or value == "":
        return value
    if is_hub_id(value):
        return value
    if os.path.isabs(value) or os.path.exists(value) or os.sep in value:
        return os.path.basename(os.path.normpath(value)) or value
    return value


def recorded_arg(arg: str) -> str:
    """An argument as a results file records it: no path of the machine that ran it (an absolute path as its
    last part; a path relative to the checkout as it is, e.g. ``space/models/ldm_class``)."""
    return public_path(arg) if os.path.isabs(arg) else arg


def recorded_command(program: str, argv) -> str:
    """A command line as a results file records it: ``program`` then ``argv`` (``recorded_arg``), shell-quoted."""
    import shlex

    return " ".join([program, shlex.join(recorded_arg(str(a)) for a in argv)]).strip()


def public_config(args) -> dict:
    """The run's flags for a card or a tracker: no token, no private keys, no local paths."""
    out = {}
    for k, v in vars(args).items():
        if k.startswith("_") or k == "hub_token":
            continue
        out[k] = public_path(v) if isinstance(v, str) else v
    return out


def card_metadata(*, pipeline_tag: Optional[str], tags, datasets=None, base_model=None,
                  license: str = "apache-2.0"):
    """A ``ModelCardData`` the Hub indexes: diffusers as the library (the folders load with
    ``DiffusionPipeline.from_pretrained``), the task, data and parent model where there is one."""
    from huggingface_hub import ModelCardData

    datasets = [d for d in (datasets or []) if is_hub_id(d)] or None
    base = [b for b in ([base_model] if isinstance(base_model, str) else (base_model or [])) if is_hub_id(b)]
    return ModelCardData(library_name="diffusers", pipeline_tag=pipeline_tag, license=license,
                         tags=list(dict.fromkeys(["hf_ddm", "diffusers", *tags])), datasets=datasets,
                         base_model=(base[0] if len(base) == 1 else base) or None)


def pipeline_usage(repo: str, call: str = "", pipeline_class: Optional[str] = None) -> str:
    """The loading snippet of a pipeline folder. A portable folder (training outputs, published copies) carries
    the pipeline's code and the hf_ddm modules it needs, so diffusers (with torch) is all the snippet needs. With
    ``pipeline_class`` (this repository's shipped folders, which hold no code) the snippet loads that installed
    hf_ddm class."""
    if pipeline_class is None:
        load = ("from diffusers import DiffusionPipeline\n\n"
                "# The folder carries its own code (model_index.json names it): hf_ddm need not be installed.\n"
                f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)\n')
    else:
        load = (f"from hf_ddm.pipelines import {pipeline_class}\n\n"
                "# The installed hf_ddm (pip install -e . in its repository); the copy that carries its code, for\n"
                "# where hf_ddm is not installed: python -m hf_ddm.portable FOLDER DEST\n"
                f'pipe = {pipeline_class}.from_pretrained("{repo}")\n')
    return (
        "```python\n"
        "import torch\n"
        + load +
        f"images = pipe({call}num_inference_steps=25, generator=torch.Generator().manual_seed(0)).images\n"
        'images[0].save("sample.png")\n'
        "```"
    )


def model_usage(repo: str, module: str, cls: str, subfolder: Optional[str] = None) -> str:
    """The loading snippet of a bare model folder (a VAE, a classifier): needs the installed hf_ddm."""
    sub = f', subfolder="{subfolder}"' if subfolder else ""
    return (
        f"Needs hf_ddm installed ({INSTALL_HINT}).\n\n"
        "```python\n"
        f"from {module} import {cls}\n\n"
        f'model = {cls}.from_pretrained("{repo}"{sub})\n'
        "```"
    )


def build_card(metadata, title: str, sections: dict):
    """``ModelCard`` from metadata and ``{heading: markdown}`` sections (empty ones left out)."""
    from huggingface_hub import ModelCard

    body = "\n\n".join(f"## {h}\n\n{text.strip()}" for h, text in sections.items() if text and text.strip())
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n# {title}\n\n{body}\n")


def write_model_card(output_dir: str, args, task, data_info, summary: dict) -> str:
    """README.md of a finished run: metadata for the Hub, what was trained on what, metrics, samples, a
    loading snippet and the flags (public form)."""
    import hf_ddm

    info = task.card_info() if task is not None else {}
    repo = getattr(args, "hub_model_id", None) or os.path.basename(os.path.normpath(output_dir))
    metrics = {k: v for k, v in summary.items() if k in ("final_loss", "mean_loss_last_10")}
    metrics.update(summary.get("validation") or {})
    metrics_md = "\n".join(f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
    grid = summary.get("sample_grid")
    dataset_name = getattr(args, "dataset_name", None)
    dataset = (getattr(data_info, "display", None) or public_path(dataset_name)
               or public_path(getattr(args, "data_dir", None)) or "unknown")
    def detail(v):  # only what names a file here is shortened: "T-shirt/top, Trouser, ..." is text, not a path
        return public_path(v) if isinstance(v, str) and (os.path.isabs(v) or os.path.exists(v)) else v

    details = "".join(f"- {k}: {detail(v)}\n" for k, v in info.get("details", {}).items())
    training = (
        f"- script: `train/train_{task.name}.py` (hf_ddm {hf_ddm.__version__})\n"
        f"- dataset: {dataset}\n"
        f"- optimizer steps: {summary.get('global_step')}, processes: {summary.get('num_processes')}, batch per "
        f"process: {args.train_batch_size}, gradient accumulation: {args.gradient_accumulation_steps}\n"
        f"- learning rate: {args.learning_rate} ({args.lr_scheduler}, {args.lr_warmup_steps} warm-up steps), EMA: "
        f"{bool(args.use_ema)}, mixed precision: {summary.get('mixed_precision')}\n" + details)
    usage = info.get("usage") or pipeline_usage("{repo}", info.get("call", ""))
    metadata = card_metadata(pipeline_tag=info.get("pipeline_tag"), tags=["training", *info.get("tags", [])],
                             datasets=[dataset_name] if dataset_name else None, base_model=info.get("base_model"))
    card = build_card(metadata, info.get("title", repo), {
        "Description": info.get("description", f"A {task.name} model trained with hf_ddm."),
        "Training": training,
        "Metrics": metrics_md or "- (none recorded)",
        "Samples": f"![samples]({grid})" if grid else "(no sample grid: run with --validation_steps)",
        "Usage": usage.replace("{repo}", repo),
        "Configuration": "```json\n" + json.dumps(public_config(args), indent=2, default=str) + "\n```",
    })
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


# --- the Hub flow ---------------------------------------------------------------------------------------

def check_hub_access(args) -> Optional[str]:
    """With ``--push_to_hub``: create the repo now (``exist_ok``), before any data or model is loaded,
    as diffusers' examples do, so an offline machine, a missing token or a wrong id stops the run in
    seconds instead of after training. Returns the repo id (None without ``--push_to_hub``)."""
    if not getattr(args, "push_to_hub", False):
        return None
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    what = f"--push_to_hub --hub_model_id {args.hub_model_id}"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{what}: HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset HF_HUB_OFFLINE, or "
                          "drop --push_to_hub (the run folder can be uploaded later with `hf upload`).")
    try:
        repo = HfApi(token=args.hub_token).create_repo(args.hub_model_id, exist_ok=True,
                                                       private=bool(args.hub_private_repo))
    except OfflineModeIsEnabled as e:
        raise ConfigError(f"{what}: HF_HUB_OFFLINE is set ({e}); unset it or drop --push_to_hub") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ("log in with `hf auth login` or pass --hub_token" if status in (401, 403)
                else "check --hub_model_id (namespace/name you may write to)")
        raise ConfigError(f"{what}: the Hub refused to create the repo (HTTP {status}): {hint}. {e}") from e
    except Exception as e:  # noqa: BLE001 - network errors of the HTTP backend: no Hub to push to
        raise ConfigError(f"{what}: the Hub is unreachable ({type(e).__name__}: {e}). Fix the connection, or "
                          "set HF_HUB_OFFLINE=1 and drop --push_to_hub to train without uploading.") from e
    return repo.repo_id


def upload_checkpoint(args, checkpoint_dir: str) -> None:
    """``--hub_upload_checkpoints``: put one complete checkpoint folder into the repo under its own name
    (``checkpoint-<step>/``), so a run on a preemptible machine can be resumed from the Hub copy."""
    from huggingface_hub import HfApi

    name = os.path.basename(os.path.normpath(checkpoint_dir))
    HfApi(token=args.hub_token).upload_folder(repo_id=getattr(args, "_hub_repo_id", None) or args.hub_model_id,
                                              folder_path=checkpoint_dir, path_in_repo=name,
                                              commit_message=f"Upload {name}")


def push_to_hub(output_dir: str, args) -> str:
    """Upload the final pipeline folder (checkpoints, logs and caches are left out); the repo exists
    already (``check_hub_access``), ``create_repo(exist_ok=True)`` keeps a direct call working."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=output_dir, commit_message="Upload hf_ddm training run",
                      ignore_patterns=UPLOAD_IGNORE)
    return repo_id


def saved_message(output_dir: str, repo_id: Optional[str] = None) -> str:
    """What a finished run prints last: where its model is and how to load it (and the Hub page when pushed)."""
    index = os.path.join(output_dir, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            cls = json.load(f)["_class_name"][1]
        where = repo_id or output_dir
        text = (f"saved the pipeline in {output_dir}\n"
                f"  load it: DiffusionPipeline.from_pretrained({where!r}, trust_remote_code=True)  (hf_ddm not needed)\n"
                f"       or: from hf_ddm.pipelines import {cls}; {cls}.from_pretrained({where!r})")
    elif not os.path.isfile(os.path.join(output_dir, "config.json")):  # a task that saves no model of its own
        text = f"saved the run in {output_dir}"
    else:
        with open(os.path.join(output_dir, "config.json")) as f:
            cls = json.load(f)["_class_name"]
        from .. import models  # the class's own module, as the model card's snippet names it

        module = getattr(getattr(models, cls, None), "__module__", "hf_ddm.models")
        text = (f"saved the model in {output_dir}\n"
                f"  load it: from {module} import {cls}; {cls}.from_pretrained({(repo_id or output_dir)!r})")
    if repo_id:
        text += f"\n  on the Hub: https://huggingface.co/{repo_id}"
    return text


__all__ = ["write_model_card", "saved_message", "push_to_hub", "check_hub_access", "upload_checkpoint", "public_path",
           "public_config", "card_metadata", "pipeline_usage", "model_usage", "build_card", "UPLOAD_IGNORE"]
