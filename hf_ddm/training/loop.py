"""The one training loop every script calls.

A script describes *what* is trained as a ``TrainingTask`` (its networks, the loss of a batch, what a
validation produces, how the result is saved); this loop does everything else the diffusers example
scripts do: Accelerate set-up (one process, DDP over many GPUs/nodes, DeepSpeed/FSDP via the accelerate
config), gradient accumulation, clipping, AdamW with warm-up + cosine/constant/..., EMA, mixed
precision, atomic checkpoints + exact resume, validation grids to disk and TensorBoard, tqdm, the final
``save_pretrained`` and the Hub upload.

Determinism and exact resume: the data order of epoch e is a permutation seeded by (seed, e); every
random draw of a step (timesteps, noise, flips, condition dropout, dropout masks) comes from a generator
seeded by (seed, optimizer step, micro-step, rank). A resumed run reloads weights, optimizer and scaler
with ``accelerator.load_state`` and the LR schedule and EMA from JSON + safetensors (``resume.py``; nothing
is unpickled), sets the epoch of the prepared loader, skips the batches already consumed in that epoch
with ``accelerator.skip_first_batches``, and then draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader, Sampler

from . import checkpoint as ckpt
from .data import collate as default_collate
from .ema import ema_weights, make_ema
from .optim import make_optimizer
from .own_state import export_state
from .resume import resume
from .utils import module_checksum, save_grid, step_seed

# accelerate's logger: messages from the main process only (unless main_process_only=False). The library
# configures no handlers; the scripts' entry points call logging.basicConfig, as diffusers' examples do.
logger = get_logger("hf_ddm.training")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; raised before the backward pass of that step, so nothing is corrupted."""

    def __init__(self, step: int, value: float, last_checkpoint: Optional[str]):
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        where = f"; the last complete checkpoint is {last_checkpoint}" if last_checkpoint else "; no checkpoint was saved"
        super().__init__(f"loss is {value} at optimizer step {step}: stopping before the update, nothing saved for "
                         f"this step{where}. Lower --learning_rate, enable --max_grad_norm, or check the data.")


class EpochSampler(Sampler):
    """Shuffles with a permutation seeded by (seed, epoch): the same order on every process and on resume."""

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        self.num_examples, self.seed, self.shuffle, self.epoch = num_examples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_examples))
        g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, 0xDA7A))
        return iter(torch.randperm(self.num_examples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_examples


def _check_writable(out: str) -> None:
    """Fail before training, naming the folder, rather than at the first checkpoint."""
    from .args import ConfigError

    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output_dir {out} cannot be created: {e.strerror or e}") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir {out} is not writable")


def _epoch_loader(accelerator, train_dataloader, sampler: "EpochSampler", epoch: int, skip: int):
    """(loader, index of its first batch) for ``epoch``, ``skip`` batches already consumed.

    Accelerate's prepared loader calls ``set_epoch(self.iteration)`` on the sampler each time it is
    iterated, with ``iteration`` its own count of completed passes; a resumed run (whose count restarts
    at 0) or the separate loader ``skip_first_batches`` builds would otherwise replay epoch 0's order.
    Setting the epoch through the loader sets that counter too, and ``skip_first_batches`` copies it."""
    sampler.set_epoch(epoch)
    if hasattr(train_dataloader, "set_epoch"):
        train_dataloader.set_epoch(epoch)
    if skip:
        return accelerator.skip_first_batches(train_dataloader, skip), skip
    return train_dataloader, 0


def _check_epoch(sampler: EpochSampler, epoch: int) -> None:
    """Guard exact resume against a change in how Accelerate drives ``set_epoch``."""
    if sampler.epoch != epoch:
        raise RuntimeError(f"the data loader shuffled epoch {epoch} with the order of epoch {sampler.epoch}: "
                           "resumed runs would not match uninterrupted ones")


class TrainingTask:
    """What a script trains. Override the methods; see train/train_ddpm.py for the smallest example.

    ``modules``: trainable networks by name; the first is the *main* one (EMA'd, in the model card).
    ``frozen``: networks used but not trained (a VAE), moved to the device, never prepared.
    """

    name: str = "model"
    modules: Dict[str, torch.nn.Module]
    frozen: Dict[str, torch.nn.Module]

    def __init__(self):
        self.modules, self.frozen = {}, {}

    def begin_step(self, global_step: int, epoch: int) -> None:
        """Called before each micro-batch's ``loss`` with the optimizer steps done so far and the epoch, for
        losses that depend on training progress (a warm-up, per-epoch captions); both are restored on resume."""

    def loss(self, modules: Dict[str, torch.nn.Module], batch: dict, generator: torch.Generator):
        """(scalar loss, dict of float logs). ``modules`` are the prepared (possibly DDP-wrapped) ones."""
        raise NotImplementedError

    def validate(self, modules: Dict[str, torch.nn.Module], generator: torch.Generator, args) -> dict:
        """{'images': (N, C, H, W) in [0, 1] or None, 'scalars': {...}} on unwrapped, EMA-weighted modules."""
        return {}

    def pipeline(self, modules: Dict[str, torch.nn.Module]):
        """The hf_ddm pipeline around ``modules`` (None: the task does not make one). The default
        ``save`` writes it; validation samples through it, so sampling code lives in the pipelines only."""
        return None

    def save(self, modules: Dict[str, torch.nn.Module], output_dir: str) -> None:
        """``self.pipeline(modules).save_pretrained(output_dir)``: model_index.json (with the pipeline's
        config, e.g. ``class_names``), one folder per component, and the pipeline's code file."""
        pipe = self.pipeline(modules)
        if pipe is None:
            raise NotImplementedError(f"{type(self).__name__} makes no pipeline: override save")
        pipe.save_pretrained(output_dir, safe_serialization=True)

    def card_info(self) -> dict:
        return {}


@dataclass
class TrainResult:
    global_step: int
    num_processes: int
    output_dir: str
    losses: List[float] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    step_times: List[float] = field(default_factory=list)  # perf_counter() after each optimizer step (benchmarks)


def make_accelerator(args):
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    project_config = ProjectConfiguration(project_dir=args.output_dir,
                                          logging_dir=os.path.join(args.output_dir, args.logging_dir))
    kwargs = dict(gradient_accumulation_steps=args.gradient_accumulation_steps, log_with=args.report_to,
                  project_config=project_config,
                  kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=getattr(args, "ddp_timeout", 1800)))])
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    if args.cpu:
        kwargs["cpu"] = True
    accelerator = Accelerator(**kwargs)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def _trackable_config(args) -> dict:
    """Flags for the tracker's hparams (written under <output_dir>/logs): no token, no local paths."""
    from .hub import public_config

    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in public_config(args).items()
            if v is not None}


def _log_images(accelerator, images: torch.Tensor, step: int, tag: str = "validation") -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            imgs = images.detach().float().cpu().clamp(0, 1)
            if imgs.shape[1] not in (1, 3):
                imgs = imgs[:, :3] if imgs.shape[1] > 3 else imgs[:, :1]
            tracker.writer.add_images(tag, imgs.numpy(), step, dataformats="NCHW")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(im.permute(1, 2, 0).numpy()) for im in images.cpu().float()]}, step=step)


# ---- GPU speed flags and the time budget (see args.add_performance_args) ---------------------------------------
def apply_performance_flags(args, accelerator, modules: Dict[str, torch.nn.Module],
                            frozen: Dict[str, torch.nn.Module]) -> dict:
    """Apply ``--channels_last`` and ``--torch_compile`` to the networks before Accelerate wraps them, and
    return the DataLoader kwargs of ``--dataloader_num_workers`` / ``--dataloader_pin_memory``.

    Compilation is in place (``nn.Module.compile``): parameter names, the optimizer, EMA, checkpoints and
    ``save_pretrained`` all see the plain module, so a compiled run resumes an eager one and vice versa.
    ``dynamic=False``: one static graph per batch shape (a short last batch costs one more compile)
    instead of slower shape-generic kernels for the whole run. Frozen networks only change memory format."""
    if getattr(args, "channels_last", False):
        for m in (*modules.values(), *frozen.values()):
            m.to(memory_format=torch.channels_last)
    if getattr(args, "torch_compile", False):
        kwargs = {"backend": getattr(args, "torch_compile_backend", "inductor"), "dynamic": False}
        if getattr(args, "torch_compile_mode", None):
            kwargs["mode"] = args.torch_compile_mode
        for m in modules.values():
            m.compile(**kwargs)
    workers = getattr(args, "dataloader_num_workers", 0)
    pin = getattr(args, "dataloader_pin_memory", None)
    if pin is None:
        pin = accelerator.device.type == "cuda"
    if pin:  # page-locked batches only pay with asynchronous copies; Accelerate reads this at prepare()
        accelerator.dataloader_config.non_blocking = True
    # Persistent workers: respawning them every epoch costs seconds on small datasets.
    return {"num_workers": workers, "pin_memory": bool(pin), "persistent_workers": workers > 0}


def _channels_last_batch(batch):
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
            for k, v in batch.items()} if isinstance(batch, dict) else batch


def _time_is_up(args, accelerator, t_start: float) -> bool:
    budget = getattr(args, "max_train_seconds", None)
    if not budget:
        return False
    up = time.perf_counter() - t_start >= budget
    if accelerator.num_processes > 1:  # all processes must stop at the same step: rank 0's clock decides
        from accelerate.utils import broadcast

        up = bool(broadcast(torch.tensor([float(up)], device=accelerator.device), from_process=0).item())
    return up


@dataclass
class Run:
    """A prepared training run: what ``setup`` builds and ``train_step`` / ``save_checkpoint`` / ``validate`` /
    ``save_final`` read and advance. ``modules`` are the prepared (possibly DDP-wrapped) networks, the first
    one the main one (EMA'd)."""

    accelerator: object
    task: TrainingTask
    modules: Dict[str, torch.nn.Module]
    params: List[torch.nn.Parameter]
    optimizer: object
    lr_scheduler: object
    ema: object
    train_dataloader: object
    sampler: EpochSampler
    steps_per_epoch: int
    max_steps: int
    num_epochs: int
    global_step: int = 0
    first_epoch: int = 0
    skip_batches: int = 0
    losses: List[float] = field(default_factory=list)
    step_times: List[float] = field(default_factory=list)
    grad_norm: Optional[float] = None
    stopped_by_time: bool = False  # --max_train_seconds ended the run before max_steps
    stop_at: Optional[int] = None  # --stop_at_step: the step the run ends at (the schedule runs to max_steps)
    # Training time of the steps before this run (from the checkpoint it resumed; None: a checkpoint that did
    # not record it), and when this run's loop started: a model trained over several resumed runs reports
    # the time of all its steps, not only the last run's.
    seconds_before: Optional[float] = 0.0
    loop_start: Optional[float] = None
    _running: float = 0.0
    _running_n: int = 0

    def train_seconds(self) -> Optional[float]:
        """Seconds of training of every step so far, over all resumed runs (None when unknown)."""
        if self.seconds_before is None or self.loop_start is None:
            return None
        return self.seconds_before + time.perf_counter() - self.loop_start

    @property
    def main_name(self) -> str:
        return next(iter(self.modules))

    def unwrapped(self) -> Dict[str, torch.nn.Module]:
        return {k: self.accelerator.unwrap_model(v) for k, v in self.modules.items()}

    def train_mode(self) -> None:
        # a method, not a loop in train(): a loop variable there would keep the last DDP wrapper alive
        # past end_run (see there)
        for m in self.modules.values():
            m.train()


def setup(args, task: TrainingTask, dataset, accelerator=None, collate_fn=default_collate) -> Run:
    """Accelerator, output folder, data loader, optimizer, LR schedule, EMA, trackers, and the resumed state
    (``resume_from_checkpoint``): everything before the first step, from the shared flags."""
    from diffusers.optimization import get_scheduler

    accelerator = accelerator or make_accelerator(args)
    logger.info(accelerator.state, main_process_only=False)
    out = args.output_dir
    _check_writable(out)  # on every process, so that all of them stop, not only the main one
    if accelerator.is_main_process:
        removed = ckpt.clean_incomplete(out)
        if removed:
            logger.warning("removed leftovers of interrupted checkpoint writes: %s", removed)
    accelerator.wait_for_everyone()
    if not args.resume_from_checkpoint and ckpt.list_checkpoints(out):
        logger.warning("%s already holds checkpoints and this run does not resume; they may be overwritten", out)

    # ---- data ---------------------------------------------------------------------------------------
    loader_kwargs = apply_performance_flags(args, accelerator, task.modules, task.frozen)
    sampler = EpochSampler(len(dataset), args.seed)
    dataloader = DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate_fn,
                            drop_last=False, **loader_kwargs)

    # ---- optimisation ------------------------------------------------------------------------------
    names = list(task.modules)
    params = [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    if args.gradient_checkpointing:
        for m in task.modules.values():
            if getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
            elif hasattr(m, "gradient_checkpointing_enable"):
                m.gradient_checkpointing_enable()
    lr = args.learning_rate
    if args.scale_lr:
        lr *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = make_optimizer(params, args, lr)
    ema = make_ema(task.modules[names[0]], args)

    prepared = accelerator.prepare(*task.modules.values(), optimizer, dataloader)
    modules = dict(zip(names, prepared[: len(names)]))
    optimizer, train_dataloader = prepared[len(names)], prepared[len(names) + 1]
    for m in task.frozen.values():
        m.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)

    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError("the dataloader is empty")
    max_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    # Not prepared on purpose: stepped once per optimizer update, independent of the number of processes.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_steps)
    # lr_scheduler and ema are checkpointed by hf_ddm (own_state.py), not registered with Accelerate,
    # which would pickle them and unpickle them on resume with weights_only=False.

    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers(args.tracker_project_name or f"hf_ddm-{task.name}", config=_trackable_config(args))

    run = Run(accelerator=accelerator, task=task, modules=modules, params=params, optimizer=optimizer,
              lr_scheduler=lr_scheduler, ema=ema, train_dataloader=train_dataloader, sampler=sampler,
              steps_per_epoch=steps_per_epoch, max_steps=max_steps, num_epochs=num_epochs,
              stop_at=getattr(args, "stop_at_step", None))
    resumed = resume(accelerator, args.resume_from_checkpoint, out, lr_scheduler, ema,
                     accelerator.unwrap_model(modules[names[0]]))
    if resumed is not None:
        accelerator.print(f"Resumed from {resumed[0]}")
        run.global_step = int(resumed[1]["global_step"])
        run.seconds_before = resumed[1].get("train_seconds")
        run.first_epoch = run.global_step // steps_per_epoch
        run.skip_batches = (run.global_step % steps_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training: %s *****", task.name)
    logger.info("  examples = %d, processes = %d, batch/process = %d, accumulation = %d, total batch = %d",
                len(dataset), accelerator.num_processes, args.train_batch_size, args.gradient_accumulation_steps,
                total_batch)
    logger.info("  optimizer steps = %d (%d epochs of %d), starting at step %d", max_steps, num_epochs, steps_per_epoch,
                run.global_step)
    return run


def train_step(run: Run, batch: dict, seed: int, max_grad_norm: Optional[float],
               last_checkpoint: Callable[[], Optional[str]] = lambda: None) -> Optional[dict]:
    """One micro-step of ``run.task.loss`` on ``batch``; every random draw from ``seed``. Returns None while
    gradients accumulate; at an optimizer update, the step's logs (``loss`` = mean over its micro-steps, lr,
    grad_norm, ema_decay, and the task's own) after stepping the LR schedule and the EMA.
    Raises ``NonFiniteLossError`` (naming ``last_checkpoint()``) before the backward pass of a NaN/inf loss."""
    accelerator = run.accelerator
    torch.manual_seed(seed)  # dropout masks etc.: a function of (seed, step, micro-step, rank) only
    gen = torch.Generator().manual_seed(seed)
    with accelerator.accumulate(*run.modules.values()):
        loss, logs = run.task.loss(run.modules, batch, gen)
        gathered = accelerator.gather(loss.detach().float().reshape(1))
        if not torch.isfinite(gathered).all():
            bad = gathered[~torch.isfinite(gathered)][0].item()
            raise NonFiniteLossError(run.global_step + 1, bad, last_checkpoint())
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm and max_grad_norm > 0:
            run.grad_norm = accelerator.clip_grad_norm_(run.params, max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    run._running += gathered.mean().item()
    run._running_n += 1
    if not accelerator.sync_gradients:
        return None
    run.lr_scheduler.step()
    if run.ema is not None:
        run.ema.step(accelerator.unwrap_model(run.modules[run.main_name]).parameters())
    run.global_step += 1
    run.step_times.append(time.perf_counter())
    step_loss = run._running / max(run._running_n, 1)
    run._running, run._running_n = 0.0, 0
    run.losses.append(step_loss)
    logs = {"loss": step_loss, "lr": run.lr_scheduler.get_last_lr()[0], **(logs or {})}
    if run.grad_norm is not None:
        logs["grad_norm"] = float(run.grad_norm)
    if run.ema is not None:
        logs["ema_decay"] = run.ema.cur_decay_value
    return logs


def save_checkpoint(run: Run, output_dir: str, epoch: int, seed: int, total_limit: Optional[int],
                    hub_args=None) -> str:
    """checkpoint-<step>/: Accelerate's state plus hf_ddm's (LR schedule, EMA, step), written atomically;
    with ``hub_args`` (``--hub_upload_checkpoints``) also uploaded from the main process."""
    from .hub import upload_checkpoint

    accelerator = run.accelerator
    own, tensor_files = export_state(run.lr_scheduler, run.ema, accelerator.unwrap_model(run.modules[run.main_name]))
    state = {"global_step": run.global_step, "epoch": epoch, "seed": seed, "max_train_steps": run.max_steps,
             "num_processes": accelerator.num_processes, "train_seconds": run.train_seconds(), **own}
    path = ckpt.save_checkpoint(accelerator, output_dir, run.global_step, state, total_limit, tensor_files)
    logger.info("saved %s", path)
    if hub_args is not None and accelerator.is_main_process:
        upload_checkpoint(hub_args, path)
    return path


def validate(run: Run, step: int, seed: int, output_dir: str, args):
    """``task.validate`` on the unwrapped, EMA-weighted networks with a generator seeded by ``seed``; the
    grid to <output_dir>/samples/step_<step>.png and the trackers. Main process only. (grid path, scalars)."""
    unwrapped = run.unwrapped()
    for m in unwrapped.values():
        m.eval()
    gen = torch.Generator().manual_seed(seed)
    with ema_weights(run.ema, unwrapped[run.main_name]):
        result = run.task.validate(unwrapped, gen, args) or {}
    for m in unwrapped.values():
        m.train()
    images = result.get("images")
    path = None
    if images is not None:
        path = save_grid(images, os.path.join(output_dir, "samples", f"step_{step:07d}.png"))
        _log_images(run.accelerator, images, step)
    if result.get("scalars"):
        run.accelerator.log({f"val/{k}": v for k, v in result["scalars"].items()}, step=step)
    return path, result.get("scalars", {})


def save_final(run: Run, args, data_info, num_examples: int, elapsed: float) -> dict:
    """The final validation, ``task.save`` with the EMA weights, the model card, train_summary.json and the
    Hub upload (``--push_to_hub``). Returns the summary (on every process)."""
    from accelerate.utils import gather_object

    from ..pipeline_utils import strip_local_origins
    from .hub import push_to_hub, saved_message, write_model_card

    accelerator, out = run.accelerator, args.output_dir
    accelerator.wait_for_everyone()
    unwrapped = run.unwrapped()
    checksums = gather_object([module_checksum(unwrapped)])
    losses = run.losses
    summary = {
        "task": run.task.name,
        "global_step": run.global_step,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "param_checksums": checksums,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
        "train_seconds_this_run": elapsed,
        "train_seconds": run.train_seconds(),
        "stopped_by_time_budget": run.stopped_by_time,
        "stop_at_step": run.stop_at,
        "examples": num_examples,
        "data_source": getattr(data_info, "display", None),
    }
    if accelerator.is_main_process:
        sample_path, val_scalars = None, {}
        if args.validation_steps or args.push_to_hub:
            sample_path, val_scalars = validate(run, run.global_step, args.seed, out, args)
        summary["validation"] = val_scalars
        with ema_weights(run.ema, unwrapped[run.main_name]):
            run.task.save(unwrapped, out)
        strip_local_origins(out)  # model-only saves (VAE, classifier) too: no local _name_or_path
        if sample_path:
            summary["sample_grid"] = os.path.relpath(sample_path, out)
        write_model_card(out, args, run.task, data_info, summary)
        with open(os.path.join(out, "train_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        repo_id = push_to_hub(out, args) if args.push_to_hub else None
        print(saved_message(out, repo_id), flush=True)
    accelerator.wait_for_everyone()
    return summary


def end_run(run: Run) -> None:
    """Drop the prepared (DDP) wrappers, then ``end_training`` (trackers, process group). A DDP reducer that
    outlives ``destroy_process_group`` holds the last reference to the gloo group, whose destructor then
    joins the group's worker threads from the wrapper's deallocation with the GIL held; a worker that
    needs the GIL to free a tensor deadlocks it, as a 2-process CPU run did under load at exit."""
    run.modules = run.unwrapped()
    run.accelerator.free_memory()
    run.accelerator.end_training()


def train(args, task: TrainingTask, dataset, data_info=None, accelerator=None, collate_fn=default_collate) -> TrainResult:
    """Train ``task`` on ``dataset`` as configured by the shared flags (see ``args.add_training_args``):
    ``setup``, then ``train_step`` per micro-batch with checkpoints and validations on their schedules, then
    ``save_final``."""
    from tqdm.auto import tqdm

    run = setup(args, task, dataset, accelerator, collate_fn)
    accelerator, out, accum = run.accelerator, args.output_dir, args.gradient_accumulation_steps
    progress = tqdm(total=run.max_steps, initial=run.global_step, disable=not accelerator.is_local_main_process,
                    desc=f"train {task.name}")
    rank = accelerator.process_index
    t_start = run.loop_start = time.perf_counter()
    run.step_times.append(t_start)
    hub_args = args if getattr(args, "hub_upload_checkpoints", False) else None

    run.train_mode()
    end = min(run.max_steps, run.stop_at or run.max_steps)
    if run.global_step > end:
        from .args import ConfigError

        progress.close()
        end_run(run)
        raise ConfigError(f"--stop_at_step {end}: the run resumed at step {run.global_step}, past it; resume from "
                          f"a checkpoint at or before step {end} (--resume_from_checkpoint PATH)")
    done = run.global_step >= end
    for epoch in range(run.first_epoch, run.num_epochs):
        if done:
            break
        loader, offset = _epoch_loader(accelerator, run.train_dataloader, run.sampler, epoch,
                                       run.skip_batches if epoch == run.first_epoch else 0)
        for batch_idx, batch in enumerate(loader):
            if batch_idx == 0:
                _check_epoch(run.sampler, epoch)
            if getattr(args, "channels_last", False):
                batch = _channels_last_batch(batch)
            micro = (offset + batch_idx) % accum
            run.task.begin_step(run.global_step, epoch)
            try:
                logs = train_step(run, batch, step_seed(args.seed, run.global_step, micro, rank), args.max_grad_norm,
                                  lambda: ckpt.latest_checkpoint(out))
            except NonFiniteLossError:
                progress.close()
                end_run(run)
                raise
            if logs is None:
                continue
            step = run.global_step
            logs["epoch"] = epoch
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs['lr']:.3g}")
            if step % args.logging_steps == 0 or step == run.max_steps:
                accelerator.log(logs, step=step)
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(run, out, epoch, args.seed, args.checkpoints_total_limit, hub_args)
            if args.validation_steps and step % args.validation_steps == 0 and step != end:
                if accelerator.is_main_process:
                    validate(run, step, args.seed, out, args)
                accelerator.wait_for_everyone()
            if step >= end:
                done = True
                break
            if _time_is_up(args, accelerator, t_start):
                logger.info("--max_train_seconds %s reached at step %d of %d", args.max_train_seconds, step,
                            run.max_steps)
                run.stopped_by_time = done = True
                break
    progress.close()
    elapsed = time.perf_counter() - t_start

    summary = save_final(run, args, data_info, len(dataset), elapsed)
    end_run(run)
    return TrainResult(global_step=run.global_step, num_processes=accelerator.num_processes, output_dir=out,
                       losses=run.losses, summary=summary, step_times=run.step_times)


def run_main(main_fn, argv=None) -> int:
    """Call a script's ``main``; turn argument/data errors and NaN stops into a clear message + exit code."""
    import sys

    from .args import ConfigError

    try:
        main_fn(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ckpt.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    return 0


__all__ = ["TrainingTask", "TrainResult", "train", "apply_performance_flags", "Run", "setup", "train_step", "save_checkpoint", "validate",
           "save_final", "make_accelerator", "EpochSampler", "NonFiniteLossError", "run_main"]
