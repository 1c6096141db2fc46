"""The training stage of benchmarks/gpu_suite.py: the pixel Fashion-MNIST DDPM of train/fashion_mnist_recipe.sh,
widened for a GPU, trained by train/train_ddpm.py for a wall-clock budget, and packed into parts small enough
for the device machine to hand back."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import struct
import sys
import tarfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def synthetic_idx(folder: Path, n: int, size: int) -> Path:
    """MNIST-style IDX files of random images (throughput does not depend on the pixels)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        pixels = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, size, size) + pixels.tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
    return folder


# The train stage's network: the recipe's ddpm stage (32,64,64 x1, attention at level 2, 1.2M parameters)
# twice as wide (4.7M): the GPU trains it in minutes, and a CPU still samples it in seconds (the Space).
TRAIN_STAGE = dict(channels="64,128,128", layers=1, attention="2", norm_groups=32, batch=240, lr="3e-4")
TRAIN_STAGE_DRY = dict(channels="16,32", layers=1, attention="1", norm_groups=8, batch=4, lr="3e-4")
PART_BYTES = 15 * 2**20


def default_data_dir() -> str:
    for d in (REPO / ".data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")):
        if any((d / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz", ".xz")):
            return str(d)
    raise SystemExit("--train-stage ddpm: no Fashion-MNIST IDX files in .data/fashion-mnist or "
                     "/usr/share/datasets/fashion-mnist; pass --data-dir")


def train_stage(args, S, device, report, seconds: float, dry: bool, deadline: float) -> None:
    import torch

    import bench_training as bt
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.training.utils import save_grid

    cfg = TRAIN_STAGE_DRY if dry else TRAIN_STAGE
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = str(synthetic_idx(Path(args.work) / "dry_data", 64, 32)) if dry else default_data_dir()
    run_dir = Path(args.work) / "ddpm"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = ["--data_dir", data_dir, "--channels", "1", "--resolution", "32", "--image_fit", "pad", "--seed", "0",
            "--block_out_channels", cfg["channels"], "--layers_per_block", str(cfg["layers"]),
            "--attention_levels", cfg["attention"], "--norm_num_groups", str(cfg["norm_groups"]),
            "--scheduler", "vp", "--train_batch_size", str(cfg["batch"]), "--learning_rate", cfg["lr"],
            # The step count is unknown in advance (a time budget), so no decay to schedule: constant LR after
            # warm-up, and the EMA weights (what is saved) do the averaging.
            "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2" if dry else "200",
            "--max_train_steps", "4" if dry else "1000000", "--max_train_seconds", str(seconds), "--use_ema",
            "--mixed_precision", "bf16", "--allow_tf32", "--torch_compile", "--torch_compile_backend",
            S.compile_backend, "--dataloader_num_workers", str(S.workers), "--checkpointing_steps", "100000000",
            "--report_to", "none", "--logging_steps", "100", "--output_dir", str(run_dir)]
    if dry or device.type != "cuda":
        argv.append("--cpu")
    try:
        result = _train_ddpm(bt, argv)
    except Exception:  # noqa: BLE001
        # Compilation fails at the first step, so little is lost: what is left of the budget trains eagerly.
        left = deadline - time.perf_counter() - (5 if dry else 30)  # the save, the samples and the tar
        if left < (1 if dry else 60):
            raise
        traceback.print_exc()
        report.line(f"\n**training stage: the compiled run failed; training {left:.0f} s without --torch_compile**")
        at = argv.index("--torch_compile")
        argv = argv[:at] + argv[at + 3:]  # drops --torch_compile --torch_compile_backend <name>
        argv[argv.index("--max_train_seconds") + 1] = str(min(seconds, left))
        shutil.rmtree(run_dir, ignore_errors=True)
        result = _train_ddpm(bt, argv)
    summary = result.summary

    out = Path(args.train_out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = PixelDiffusionPipeline.from_pretrained(run_dir).to(device)  # the saved folder loads: check it here
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=S.sample_count, num_inference_steps=S.sample_steps, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    save_grid(images, str(out / "samples.png"))
    parts = pack_folder(run_dir, out / "ddpm_pipeline.tar")
    shutil.copyfile(run_dir / "train_summary.json", out / "train_summary.json")
    params = sum(p.numel() for p in pipe.unet.parameters())
    steps, secs = summary["global_step"], summary["train_seconds_this_run"]
    name = report.table(
        "Training stage: pixel Fashion-MNIST DDPM (train/train_ddpm.py)",
        ["U-Net", "parameters", "batch", "optimizer steps", "epochs", "train s", "img/s", "mean loss (last 10)",
         "stopped by time"],
        f"Recipe stage ddpm (32x32x1, --image_fit pad, VP, epsilon, EMA) widened for the GPU; bf16, "
        f"--torch_compile, constant LR {cfg['lr']} after warm-up. Saved: $OUT/{out.name}/ddpm_pipeline.tar.part-* "
        f"({len(parts)} parts; `cat ddpm_pipeline.tar.part-* | tar -x` gives the folder `ddpm/`), samples.png "
        f"({S.sample_count} samples, {S.sample_steps} steps of the saved scheduler, seed 0), train_summary.json.")
    report.row(name, [f"{cfg['channels']} x{cfg['layers']}, attention {cfg['attention']}", f"{params:,}",
                      cfg["batch"], steps, steps * cfg["batch"] / summary["examples"], secs,
                      steps * cfg["batch"] / secs, summary["mean_loss_last_10"], summary["stopped_by_time_budget"]])


def _train_ddpm(bt, argv):
    bt._reset()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the script's prints stay out of the Markdown
            return bt._load("train_ddpm").main(argv)
    finally:
        bt._reset()


def pack_folder(folder: Path, tar_path: Path, part_bytes: int = PART_BYTES) -> list:
    """Tar ``folder`` (no checkpoints, logs or validation grids) and split it into parts of at most
    ``part_bytes``: the device machine hands back only files of at most 16 MiB."""
    skip = ("checkpoint-", "logs", "samples", "latent_cache")

    def keep(info):
        rel = Path(info.name).parts[1:]
        return None if rel and rel[0].startswith(skip) else info

    tmp = tar_path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(folder, arcname=folder.name, filter=keep)
    for old in tar_path.parent.glob(tar_path.name + ".part-*"):
        old.unlink()
    parts = []
    with open(tmp, "rb") as f:
        while chunk := f.read(part_bytes):
            part = tar_path.parent / f"{tar_path.name}.part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part)
    tmp.unlink()
    return parts
