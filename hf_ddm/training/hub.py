"""Model card and Hub upload for a finished training run."""

from __future__ import annotations

import json
import os


CARD_TEMPLATE = """---
{metadata}
---

# {title}

{description}

## Training

- script: `train/train_{task}.py` (hf_ddm {version})
- dataset: {dataset}
- optimizer steps: {steps}, processes: {processes}, batch per process: {batch}, gradient accumulation: {accum}
- learning rate: {lr} ({lr_scheduler}, {warmup} warm-up steps), EMA: {ema}, mixed precision: {mp}
{extra}
## Metrics

{metrics}

## Samples

{samples}

## Usage

{usage}

## Configuration

```json
{config}
```
"""


USAGE = """```python
import hf_ddm  # registers hf_ddm's model and scheduler classes with diffusers
from diffusers import DiffusionPipeline

# the folder carries its pipeline's code (hf_ddm.pipelines), named in model_index.json
pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)
```"""


def write_model_card(output_dir: str, args, task, data_info, summary: dict) -> str:
    import hf_ddm

    info = task.card_info() if task is not None else {}
    metrics = {k: v for k, v in summary.items() if k in ("final_loss", "mean_loss_last_10")}
    metrics.update(summary.get("validation") or {})
    metrics_md = "\n".join(f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()) \
        or "- (none recorded)"
    grid = summary.get("sample_grid")
    samples = f"![samples]({grid})" if grid else "(no sample grid: run with --validation_steps)"
    dataset = getattr(data_info, "source", None) or getattr(args, "dataset_name", None) or "unknown"
    tags = ["hf_ddm", "diffusers", "diffusion", "training"] + list(info.get("tags", []))
    meta = {"library_name": "diffusers", "license": "apache-2.0", "tags": tags}
    if getattr(args, "dataset_name", None) and not os.path.isdir(args.dataset_name):
        meta["datasets"] = [args.dataset_name]
    meta_yaml = "\n".join(f"{k}: {json.dumps(v)}" for k, v in meta.items())
    config = {k: v for k, v in vars(args).items() if k not in ("hub_token",) and not k.startswith("_")}
    extra = "".join(f"- {k}: {v}\n" for k, v in info.get("details", {}).items())
    text = CARD_TEMPLATE.format(
        metadata=meta_yaml, title=info.get("title", args.hub_model_id or f"hf_ddm {task.name}"),
        description=info.get("description", f"A {task.name} model trained with hf_ddm."), task=task.name,
        version=hf_ddm.__version__, dataset=dataset, steps=summary.get("global_step"),
        processes=summary.get("num_processes"), batch=args.train_batch_size, accum=args.gradient_accumulation_steps,
        lr=args.learning_rate, lr_scheduler=args.lr_scheduler, warmup=args.lr_warmup_steps, ema=bool(args.use_ema),
        mp=summary.get("mixed_precision"), extra=extra, metrics=metrics_md, samples=samples,
        usage=info.get("usage", USAGE).format(repo=args.hub_model_id or output_dir),
        config=json.dumps(config, indent=2, default=str))
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def push_to_hub(output_dir: str, args) -> str:
    """Create the repo and upload the final pipeline folder (checkpoints and logs are left out)."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
    ignore = ["checkpoint-*/**", ".tmp-checkpoint-*/**", ".del-checkpoint-*/**", "logs/**", "*.tmp*", "latent_cache/**"]
    api.upload_folder(repo_id=repo_id, folder_path=output_dir, commit_message="Upload hf_ddm training run",
                      ignore_patterns=ignore)
    return repo_id


__all__ = ["write_model_card", "push_to_hub"]
