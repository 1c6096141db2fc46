"""Shared helpers for the training-script tests, and unit tests of hf_ddm.training's pieces.

The scripts are run in-process where possible (``run_script``; Accelerate's singletons are reset
between runs) and as subprocesses where the test needs a real process boundary (SIGKILL, torchrun).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train"

TINY_UNET = ["--block_out_channels", "8,16", "--layers_per_block", "1", "--attention_levels", "",
             "--norm_num_groups", "4", "--attention_head_dim", "8"]
FAST = ["--cpu", "--report_to", "none", "--lr_warmup_steps", "1", "--num_inference_steps", "3",
        "--num_validation_images", "4", "--logging_steps", "1"]


def write_idx(folder: Path, n: int = 64, size: int = 16, classes: int = 4, seed: int = 0, prefix: str = "train") -> Path:
    """A tiny MNIST-style IDX dataset: class k = a bright square in quadrant k on noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % classes).astype(np.uint8)
    images = (rng.random((n, size, size)) * 60).astype(np.uint8)
    h = size // 2
    for i, k in enumerate(labels):
        r, c = divmod(int(k) % 4, 2)
        images[i, r * h:(r + 1) * h, c * h:(c + 1) * h] = 200 + rng.integers(0, 55)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, size, size) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.tobytes())
    return folder


@pytest.fixture(scope="session")
def idx_data(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("idx"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_train_{name}", TRAIN / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_script(name: str, argv, expect_rc: int = 0):
    """Run train/<name>.py's main in this process; returns (rc, train_summary or None)."""
    from hf_ddm.training import run_main

    mod = load_script(name)
    reset_accelerate()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # = the subprocesses' OMP_NUM_THREADS=1: bitwise-comparable float reductions
    try:
        rc = run_main(mod.main, [str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
        reset_accelerate()
    assert rc == expect_rc
    out = Path(argv[argv.index("--output_dir") + 1])
    summary = out / "train_summary.json"
    return rc, (json.loads(summary.read_text()) if summary.exists() else None)


def run_subprocess(args, env=None, timeout=600, check=True):
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([str(a) for a in args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[:3]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def scheduler_available(name: str) -> bool:
    from hf_ddm.training.components import SCHEDULERS

    return name in SCHEDULERS  # the scripts' --scheduler names, each an imported class


def require_scheduler(name: str):
    """Every scheduler the scripts name must exist: a missing one fails the test, it is never skipped."""
    assert scheduler_available(name), f"hf_ddm scheduler {name!r} is missing"


# ------------------------------------------------------------------------------------------------------
# unit tests of the library parts
# ------------------------------------------------------------------------------------------------------


def _args(**kw):
    import argparse

    from hf_ddm.training import add_data_args

    p = argparse.ArgumentParser()
    add_data_args(p)
    a = p.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_idx_dataset_range_and_shapes(idx_data):
    from hf_ddm.training import load_image_dataset

    ds, info = load_image_dataset(_args(data_dir=str(idx_data), resolution=8), channels=3)
    assert len(ds) == 64 and info.num_classes == 10  # MNIST-style names for a non-"fashion" folder
    ex = ds[0]
    assert ex["pixel_values"].shape == (3, 8, 8)
    assert ex["pixel_values"].min() >= -1 and ex["pixel_values"].max() <= 1
    assert ex["class_labels"].dtype == torch.long


def test_fashion_mnist_idx_if_installed():
    d = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(d):
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a broken install step
            pytest.fail("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
        pytest.skip("dataset-fashion-mnist not installed")
    from hf_ddm.training import load_image_dataset

    ds, info = load_image_dataset(_args(data_dir=d, resolution=16, max_train_samples=64), channels=1)
    assert len(ds) == 64 and info.class_names[0] == "T-shirt/top"
    assert ds[0]["pixel_values"].shape == (1, 16, 16)


def test_imagefolder(tmp_path):
    from PIL import Image

    from hf_ddm.training import load_image_dataset

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((12, 10, 3)) * 255).astype(np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    ds, info = load_image_dataset(_args(data_dir=str(tmp_path), resolution=8), channels=3)
    assert len(ds) == 6 and info.class_names == ["cat", "dog"]
    assert ds[0]["pixel_values"].shape == (3, 8, 8)


def test_missing_data_dir_is_config_error(tmp_path):
    from hf_ddm.training import ConfigError, load_image_dataset

    with pytest.raises(ConfigError, match="does not exist"):
        load_image_dataset(_args(data_dir=str(tmp_path / "nope")), channels=1)


def test_checkpoint_listing_ignores_incomplete(tmp_path):
    from hf_ddm.training import checkpoint as ck

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / ck.STATE_FILE).write_text(json.dumps({"global_step": step}))
    (tmp_path / ".tmp-checkpoint-8").mkdir()
    assert ck.latest_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    assert ck.clean_incomplete(str(tmp_path)) == [".tmp-checkpoint-8"]
    ck.prune_checkpoints(str(tmp_path), 1)
    assert [s for s, _ in ck.list_checkpoints(str(tmp_path))] == [4]
    with pytest.raises(ValueError, match="incomplete"):
        ck.resolve_resume(str(tmp_path / "checkpoint-6"), str(tmp_path))
    assert ck.resolve_resume("latest", str(tmp_path / "empty")) is None


def test_push_to_hub_with_mock(tmp_path, monkeypatch):
    import argparse
    from unittest import mock

    from hf_ddm.training import hub
    from hf_ddm.training.loop import TrainingTask

    args = argparse.Namespace(hub_model_id="me/tiny", hub_token="tok", hub_private_repo=True, dataset_name=None,
                              train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4,
                              lr_scheduler="cosine", lr_warmup_steps=0, use_ema=True)
    task = TrainingTask()
    task.name = "ddpm"
    (tmp_path / "samples").mkdir()
    summary = {"global_step": 7, "num_processes": 1, "final_loss": 0.25, "sample_grid": "samples/step_0000007.png"}
    card = Path(hub.write_model_card(str(tmp_path), args, task, None, summary)).read_text()
    assert "final_loss: 0.25" in card and "samples/step_0000007.png" in card and '"hub_model_id": "me/tiny"' in card
    assert "hub_token" not in card
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value = mock.Mock(repo_id="me/tiny")
        assert hub.push_to_hub(str(tmp_path), args) == "me/tiny"
    api_cls.assert_called_once_with(token="tok")
    api.create_repo.assert_called_once_with("me/tiny", exist_ok=True, private=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/tiny" and kwargs["folder_path"] == str(tmp_path)
    assert "checkpoint-*/**" in kwargs["ignore_patterns"]


def test_epoch_sampler_is_seeded():
    from hf_ddm.training.loop import EpochSampler

    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(10))


def test_pad_fit_keeps_pixels_and_pads_with_background():
    import torch as _torch

    from hf_ddm.training.data import _to_model_range

    x = _torch.randint(0, 256, (3, 1, 28, 28), dtype=_torch.uint8)
    y = _to_model_range(x, 32, 1, "pad")
    assert y.shape == (3, 1, 32, 32)
    _torch.testing.assert_close(y[:, :, 2:30, 2:30], x.float() / 127.5 - 1)
    border = _torch.ones(32, 32, dtype=_torch.bool)
    border[2:30, 2:30] = False
    assert (y[:, :, border] == -1).all()
    assert _to_model_range(x, 32, 1, "resize").shape == (3, 1, 32, 32)


@pytest.mark.parametrize("bad, message", [
    (["--num_epochs", "0"], "--num_epochs must be >= 1"),
    (["--max_train_samples", "-5"], "--max_train_samples must be >= 1"),
    (["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be >= 0"),
    (["--ema_max_decay", "2"], "--ema_max_decay must be in [0, 1]"),
    (["--lr_warmup_steps", "-1"], "--lr_warmup_steps must be >= 0"),
    (["--learning_rate", "0"], "--learning_rate must be a positive number"),
    (["--ema_power", "-0.5"], "--ema_power must be a positive number"),
])
def test_training_values_that_would_train_wrong_are_refused_by_flag(capsys, bad, message):
    from hf_ddm.training import parse_args

    parser = load_script("train_ddpm").build_parser()
    with pytest.raises(SystemExit) as e:
        parse_args(parser, ["--data_dir", "unused", *bad])
    assert e.value.code == 2 and message in capsys.readouterr().err
    ok = parse_args(parser, ["--data_dir", "unused", "--num_epochs", "0", "--max_train_steps", "3"])
    assert ok.max_train_steps == 3  # --max_train_steps overrides --num_epochs


@pytest.mark.parametrize("content, message", [
    ("{not json", "--scheduler_config .* is not a scheduler config.*JSONDecodeError"),
    ("[1, 2]", "--scheduler_config .* must hold a JSON object"),
    ('{"num_train_timesteps": 2.5}', "--scheduler_config .* cannot build VPScheduler.*num_train_timesteps"),
])
def test_bad_scheduler_config_is_a_config_error_naming_the_flag(tmp_path, content, message):
    import argparse

    from hf_ddm.training import ConfigError
    from hf_ddm.training.components import build_scheduler

    path = tmp_path / "scheduler_config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        build_scheduler(argparse.Namespace(scheduler="vp", scheduler_config=str(path)))
    if content == "{not json":  # a saved scheduler folder holding it
        with pytest.raises(ConfigError, match="--scheduler_config .* is not a scheduler config"):
            build_scheduler(argparse.Namespace(scheduler="vp", scheduler_config=str(tmp_path)))


def test_truncated_png_among_good_ones_stops_the_script_naming_the_file(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    data = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(data[: len(data) // 2])
    run_script("train_ddpm", ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
                              "--resolution", "8", "--max_train_steps", "2", "--train_batch_size", "4", *TINY_UNET,
                              *FAST], expect_rc=2)
    assert "2.png" in capsys.readouterr().err
