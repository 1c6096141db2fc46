"""The reference feature network: a small Fashion-MNIST CNN, the measuring instrument of
``benchmarks/eval_quality.py`` (Fréchet distance in its penultimate features, precision/recall,
class accuracy of conditional samples).

    python benchmarks/reference_classifier.py --train            # once; refuses to overwrite
    python benchmarks/reference_classifier.py --eval             # re-check the test accuracy
    python benchmarks/reference_classifier.py --train --force-new-version   # a *new* version (v2, ...)

Input: 1x32x32 in [-1, 1], i.e. the 28x28 uint8 images scaled to [-1, 1] and padded by 2 pixels of
-1 on every side (``to_reference_input``); 28x28 inputs are padded automatically. The generative
models work at 32x32, 1 channel, [-1, 1].

An instrument must not drift: the weights' sha256 is pinned in ``PINNED_SHA256`` below (and recorded
in ``reference/config.json`` and the card); ``load_reference`` refuses a file whose hash differs, and
``--train`` refuses to overwrite existing weights. Retraining means a new version, a new pin, and
numbers that are not comparable with the old ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(HERE, "reference")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
SEED = 20240601

# version -> sha256 of model.safetensors. The one place a version's weights are vouched for.
PINNED_SHA256 = {
    "v1": "16068cb6b84de8fd4827e2b4ecf94f1c2f6844ca6bb55ef5757bd57a24cf45fd",  # 93.67% test, reference/README.md
}

ARCH = {"in_channels": 1, "image_size": 32, "widths": [16, 32, 64], "feature_dim": 128, "num_classes": 10,
        "dropout": 0.3}

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


class ReferenceTampered(RuntimeError):
    """The reference weights do not match their pinned sha256."""


# ----------------------------------------------------------------------------------------------- data
from hf_ddm.training.data import read_idx  # noqa: E402  (the one IDX reader)
from hf_ddm.training.hub import recorded_command  # noqa: E402


def _find(data_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"{os.path.join(data_dir, stem)}[.gz] not found; install Fashion-MNIST with "
        "`apt-get install dataset-fashion-mnist` or pass --data_dir"
    )


def dataset_available(data_dir: str = DEFAULT_DATA_DIR) -> bool:
    try:
        for split in ("train", "t10k"):
            _find(data_dir, f"{split}-images-idx3-ubyte")
            _find(data_dir, f"{split}-labels-idx1-ubyte")
        return True
    except FileNotFoundError:
        return False


def load_fashion_mnist(split: str, data_dir: str = DEFAULT_DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 28, 28), int64 labels (N,)) for split "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return images, labels


def to_reference_input(images) -> torch.Tensor:
    """uint8 (N, 28, 28) / (N, 1, 28, 28) in [0, 255] -> float (N, 1, 32, 32) in [-1, 1], padded with -1."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.array(images, copy=True))
    if x.ndim == 3:
        x = x[:, None]
    x = x.float() / 127.5 - 1.0
    return pad_to_32(x)


def pad_to_32(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) in [-1, 1] -> (N, 1, 32, 32), 2 pixels of -1 (black) on every side; 32x32 passes."""
    if x.shape[-2:] == (32, 32):
        return x
    if x.shape[-2:] != (28, 28):
        raise ValueError(f"the reference network takes 28x28 or 32x32 images, got {tuple(x.shape[-2:])}")
    return F.pad(x, (2, 2, 2, 2), value=-1.0)


# ---------------------------------------------------------------------------------------------- model
class ReferenceCNN(nn.Module):
    """conv-BN-ReLU x2 per stage (16, 32, 64 channels at 32, 16, 8 px), max-pool after each stage
    -> 64x4x4 -> linear -> ReLU = the 128-d features -> dropout -> linear -> 10 logits."""

    def __init__(self, in_channels=1, image_size=32, widths=(16, 32, 64), feature_dim=128, num_classes=10,
                 dropout=0.3):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.fc = nn.Linear(c * side * side, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate layer: (N, 128) post-ReLU activations. ``x`` in [-1, 1], 28 or 32 px."""
        x = pad_to_32(x)
        return F.relu(self.fc(self.body(x).flatten(1)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def forward(self, x):
        return self.logits(x)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_reference(path: str = REFERENCE_DIR, allow_unpinned: bool = False) -> ReferenceCNN:
    """The reference network in eval mode (CPU, float32), after checking its weights' sha256 against
    the hash in ``config.json`` and the hash pinned in this file for that version.

    Raises ``ReferenceTampered`` on any mismatch. ``allow_unpinned`` admits a version not (yet) pinned
    here -- only for developing a new version, never for reported numbers."""
    from safetensors.torch import load_file

    cfg_path, w_path = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise FileNotFoundError(f"no reference network at {path} ({CONFIG_NAME} + {WEIGHTS_NAME}); "
                                "it is shipped in the repository -- do not retrain it to get one")
    with open(cfg_path) as f:
        cfg = json.load(f)
    version, recorded = cfg["version"], cfg["sha256"]
    actual = sha256_file(w_path)
    if actual != recorded:
        raise ReferenceTampered(f"{w_path}: sha256 {actual} != {recorded} recorded in {CONFIG_NAME} "
                                f"(reference {version}); the measuring instrument has been changed")
    pinned = PINNED_SHA256.get(version)
    if pinned is None and not allow_unpinned:
        raise ReferenceTampered(f"reference version {version!r} has no sha256 pinned in {__file__} (PINNED_SHA256)")
    if pinned is not None and pinned != actual:
        raise ReferenceTampered(f"{w_path}: sha256 {actual} != {pinned} pinned for {version} in {__file__}")
    model = ReferenceCNN(**cfg["arch"])
    model.load_state_dict(load_file(w_path))
    model.version = version
    model.sha256 = actual
    return model.eval()


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([fn(x[i: i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def accuracy(model: ReferenceCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = batched(model.logits, x).argmax(1)
    return float((pred == y).float().mean())


# ------------------------------------------------------------------------------------------- training
def train(out_dir: str, data_dir: str, epochs: int, batch_size: int, lr: float, version: str, command: str):
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    xtr, ytr = load_fashion_mnist("train", data_dir)
    xte, yte = load_fashion_mnist("test", data_dir)
    xtr, xte = to_reference_input(xtr), to_reference_input(xte)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = ReferenceCNN(**ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        tot, n = 0.0, 0
        for i in range(0, len(xtr), batch_size):
            idx = perm[i: i + batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot, n = tot + loss.item() * len(idx), n + len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {tot / n:.4f}  ({time.time() - t_start:.0f}s)", flush=True)
    model.eval()
    test_acc = accuracy(model, xte, yte)
    train_acc = accuracy(model, xtr[:10000], ytr[:10000])
    elapsed = time.time() - t_start
    print(f"test accuracy {test_acc:.4f}  train[:10k] accuracy {train_acc:.4f}  ({elapsed:.0f}s)", flush=True)

    os.makedirs(out_dir, exist_ok=True)
    w_path = os.path.join(out_dir, WEIGHTS_NAME)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, w_path, metadata={"version": version, "format": "pt"})
    digest = sha256_file(w_path)
    cfg = {
        "version": version, "sha256": digest, "arch": ARCH, "seed": SEED,
        "input": "1x32x32 float in [-1, 1]: uint8/127.5 - 1, 28x28 padded by 2 px of -1 on every side",
        "features": "penultimate layer: 128-d post-ReLU activations of the hidden linear layer",
        "class_names": CLASS_NAMES,
        "training": {"epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW(wd=5e-4) + OneCycle",
                     "max_lr": lr, "label_smoothing": 0.05, "augmentation": "none", "data": "Fashion-MNIST train, 60000",
                     "seconds": round(elapsed), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "command": command},
        "test_accuracy": round(test_acc, 4), "train10k_accuracy": round(train_acc, 4),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, CARD_NAME), "w") as f:
        f.write(_card(cfg))
    print(f"wrote {out_dir}: sha256 {digest}\nPin it: PINNED_SHA256[{version!r}] = {digest!r} in {__file__}")
    return cfg


def _card(cfg) -> str:
    t = cfg["training"]
    return f"""# hf_ddm reference network {cfg['version']} (Fashion-MNIST CNN)

The measuring instrument of `benchmarks/eval_quality.py`: Fréchet distance and precision/recall are
computed in its penultimate features, class accuracy of conditional samples with its logits.
**Do not retrain or edit**: numbers are comparable only under the same version. A new network is a
new version (`--force-new-version`), with its own pin in `reference_classifier.PINNED_SHA256`.

- version: {cfg['version']}
- weights: `model.safetensors`, sha256 `{cfg['sha256']}`
- test accuracy (Fashion-MNIST test, 10000 images): **{cfg['test_accuracy'] * 100:.2f}%**
  (train[:10k]: {cfg['train10k_accuracy'] * 100:.2f}%)
- architecture: {cfg['arch']} ({cfg['num_parameters']} parameters); features = 128-d post-ReLU hidden layer
- input: {cfg['input']}
- training: seed {cfg['seed']}, {t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']}, max lr {t['max_lr']},
  label smoothing {t['label_smoothing']}, no augmentation, {t['data']}; {t['seconds']} s on {t['threads']} CPU thread(s),
  torch {t['torch']}
- command: `{t['command']}`
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="train the reference network (refuses to overwrite)")
    p.add_argument("--eval", action="store_true", help="load (hash-checked) and report the test accuracy")
    p.add_argument("--force-new-version", action="store_true",
                   help="train a NEW version next to the old one's numbers: bumps the version (v1 -> v2)")
    p.add_argument("--out_dir", default=REFERENCE_DIR)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        version = "v1"
        cfg_path = os.path.join(args.out_dir, CONFIG_NAME)
        exists = os.path.exists(cfg_path) or os.path.exists(os.path.join(args.out_dir, WEIGHTS_NAME))
        if exists:
            if not args.force_new_version:
                sys.exit(f"{args.out_dir} already holds a reference network; refusing to overwrite the measuring "
                         "instrument. Pass --force-new-version to train a new, incomparable version.")
            with open(cfg_path) as f:
                old = json.load(f)["version"]
            version = f"v{int(old.lstrip('v')) + 1}"
            print(f"training NEW reference version {version} (replaces {old}); numbers are not comparable across versions")
        command = recorded_command("python benchmarks/reference_classifier.py", argv if argv is not None else sys.argv[1:])
        train(args.out_dir, args.data_dir, args.epochs, args.batch_size, args.lr, version, command)
    if args.eval:
        model = load_reference(args.out_dir)
        xte, yte = load_fashion_mnist("test", args.data_dir)
        acc = accuracy(model, to_reference_input(xte), torch.from_numpy(yte))
        print(f"reference {model.version} (sha256 {model.sha256[:12]}…): test accuracy {acc:.4f}")
    if not (args.train or args.eval):
        p.print_help()


if __name__ == "__main__":
    main()
