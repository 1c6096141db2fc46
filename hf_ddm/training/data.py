"""Training data: datasets Hub names, local image folders, and MNIST-style IDX files, all mapped to
``{"pixel_values": (C, R, R) float in [-1, 1], "class_labels": long}`` examples.

Augmentation (random flip) is *not* done here: the loop flips with a per-step seeded generator, so
that a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import lzma
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .args import ConfigError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]

_IDX_PREFIX = {"train": "train", "test": "t10k", "validation": "t10k"}


@dataclass
class DataInfo:
    """What a data source is: ``source`` identifies it exactly (cache keys; may hold local paths),
    ``display`` names it for cards, logs and summaries (no path of this machine)."""

    source: str
    num_examples: int
    class_names: Optional[List[str]] = None
    extra: dict = field(default_factory=dict)
    display: Optional[str] = None

    def __post_init__(self):
        if self.display is None:
            self.display = self.source

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.class_names) if self.class_names else None


def _folder_name(path: str) -> str:
    """A local folder as cards and logs show it: its name, not where it lies on this machine."""
    return os.path.basename(os.path.normpath(os.path.abspath(path)))


def _find_idx(data_dir: str, stem: str) -> Optional[str]:
    for name in (f"{stem}", f"{stem}.gz", f"{stem}.xz"):  # .xz: 15% smaller than .gz for Fashion-MNIST
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    return None


def is_idx_dir(data_dir: str) -> bool:
    return any(_find_idx(data_dir, f"{p}-images-idx3-ubyte") for p in ("train", "t10k"))


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip- or xz-compressed): uint8 array of the stored shape."""
    opener = gzip.open if path.endswith(".gz") else lzma.open if path.endswith(".xz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ConfigError(f"{path}: IDX header says {shape} but holds {arr.size} values (truncated file?)")
    return arr.reshape(shape)


def _to_model_range(images: torch.Tensor, resolution: int, channels: int, fit: str = "resize",
                    max_value: float = 255.0) -> torch.Tensor:
    """uint8/int/float (N, C, H, W) in [0, max_value] (255: 8-bit, 65535: 16-bit) -> float (N, channels, R, R)
    in [-1, 1], channels converted.
    ``fit="resize"``: resize the shorter side to R, center-crop. ``fit="pad"``: keep the pixels, pad with
    the background value -1 (or center-crop) to R x R -- e.g. Fashion-MNIST 28 -> 32, which is what the
    reference feature network of benchmarks/ sees."""
    x = images.float() / (max_value / 2) - 1.0
    c = x.shape[1]
    if c != channels:
        if c == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)[: c].view(1, c, 1, 1)
            x = (x * w).sum(1, keepdim=True)
    h, w = x.shape[-2:]
    if fit == "pad" and (h, w) != (resolution, resolution):
        ph, pw = max(resolution - h, 0), max(resolution - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
        h, w = x.shape[-2:]
        top, left = (h - resolution) // 2, (w - resolution) // 2
        x = x[..., top: top + resolution, left: left + resolution]
    elif (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        x = x[..., top: top + resolution, left: left + resolution]
    return x.clamp(-1, 1).contiguous()


# PIL modes of 16-bit greyscale (PNG 16-bit grey loads as "I;16", or as "I" with older Pillow).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_array(img, channels: int, where=lambda: "an image") -> tuple:
    """(C, H, W) tensor and its full-scale value for a PIL image: 8-bit modes through ``convert`` (255), 16-bit
    greyscale at its real depth (65535; ``convert("L")`` would clip it: mid-grey would become white). Other
    deep modes (32-bit int beyond 16 bits, float) are refused, naming the file (``where()``)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.int32)
        if arr.ndim != 2 or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
            raise ConfigError(f"{where()}: mode {img.mode} image with values outside 16 bits "
                              f"([{arr.min()}, {arr.max()}]); convert it to 8- or 16-bit PNG")
        t = torch.from_numpy(arr)[None]
        return (t.expand(channels, -1, -1) if channels != 1 else t), 65535.0
    if img.mode in ("F", "I;32", "I;32B", "I;32L"):
        raise ConfigError(f"{where()}: mode {img.mode} images (32-bit) are not supported; save 8- or 16-bit PNGs")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return (arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)), 255.0


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W); converted per item."""

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], resolution: int, channels: int,
                 fit: str = "resize"):
        self.images, self.labels, self.resolution, self.channels, self.fit = images, labels, resolution, channels, fit

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        out = {"pixel_values": _to_model_range(self.images[i: i + 1], self.resolution, self.channels, self.fit)[0]}
        if self.labels is not None:
            out["class_labels"] = self.labels[i]
        return out


class HFImageDataset(Dataset):
    """A datasets ``Dataset`` with an Image column (PIL) and optional label column."""

    def __init__(self, ds, image_column: str, label_column: Optional[str], resolution: int, channels: int,
                 fit: str = "resize"):
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.resolution, self.channels, self.fit = resolution, channels, fit

    def __len__(self):
        return len(self.ds)

    def _file_of(self, i: int) -> str:
        """Where example ``i``'s image comes from, read without decoding it."""
        try:
            from datasets import Image

            raw = self.ds.cast_column(self.image_column, Image(decode=False))[int(i)][self.image_column]
            path = raw.get("path") if isinstance(raw, dict) else None
        except Exception:  # noqa: BLE001 - only used to name the file in an error message
            path = None
        return f"file {path}" if path else f"example {i} of column {self.image_column!r} (no file name recorded)"

    def __getitem__(self, i):
        try:
            row = self.ds[int(i)]  # datasets decodes (and fully loads) the image here
            img = row[self.image_column]
            img.load()
        except Exception as e:  # noqa: BLE001 - truncated/corrupt files: say which one
            raise ConfigError(f"cannot read the image of {self._file_of(i)}: {type(e).__name__}: {e}") from e
        arr, max_value = image_array(img, self.channels, lambda: self._file_of(i))
        out = {"pixel_values": _to_model_range(arr[None], self.resolution, self.channels, self.fit, max_value)[0]}
        if self.label_column is not None:
            out["class_labels"] = torch.tensor(int(row[self.label_column]), dtype=torch.long)
        return out


def _load_idx(data_dir: str, split: str, resolution: int, channels: int, max_samples: Optional[int],
              fit: str = "resize"):
    prefix = _IDX_PREFIX.get(split, split)
    img_path = _find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    if img_path is None:
        raise ConfigError(f"--data_dir {data_dir}: no {prefix}-images-idx3-ubyte[.gz|.xz] for split {split!r}")
    images = read_idx(img_path)
    lbl_path = _find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(lbl_path) if lbl_path else None
    if max_samples is not None:
        images = images[:max_samples]
        labels = labels[:max_samples] if labels is not None else None
    images_t = torch.from_numpy(images.copy())[:, None]  # (N, 1, H, W)
    labels_t = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    names = FASHION_MNIST_CLASSES if "fashion" in os.path.abspath(data_dir).lower() else MNIST_CLASSES
    if labels_t is not None and labels_t.numel() and int(labels_t.max()) >= len(names):
        names = [str(i) for i in range(int(labels_t.max()) + 1)]
    ds = TensorImageDataset(images_t, labels_t, resolution, channels, fit)
    info = DataInfo(source=f"idx:{os.path.abspath(data_dir)}:{split}", num_examples=len(ds),
                    display=f"{_folder_name(data_dir)} (local IDX files, split {split})",
                    class_names=names if labels_t is not None else None,
                    extra={"files": [os.path.basename(img_path)] + ([os.path.basename(lbl_path)] if lbl_path else [])})
    return ds, info


def _pick_columns(ds, image_column, label_column):
    from datasets import ClassLabel, Image

    feats = ds.features
    if image_column is None:
        for cand in ("image", "img", "pixel_values"):
            if cand in feats:
                image_column = cand
                break
        else:
            image_column = next((k for k, v in feats.items() if isinstance(v, Image)), None)
    if image_column is None or image_column not in feats:
        raise ConfigError(f"no image column found (columns: {list(feats)}); pass --image_column")
    names = None
    if label_column is None:
        label_column = next((c for c in ("label", "labels", "class", "fine_label") if c in feats), None)
    elif label_column not in feats:
        raise ConfigError(f"--label_column {label_column!r} not in the dataset columns {list(feats)}")
    if label_column is not None and isinstance(feats[label_column], ClassLabel):
        names = list(feats[label_column].names)
    return image_column, label_column, names


def load_image_dataset(args, channels: int) -> tuple[Dataset, DataInfo]:
    """Build the training dataset from ``--dataset_name`` or ``--data_dir``; raise ConfigError on bad input."""
    resolution = args.resolution
    fit = getattr(args, "image_fit", "resize")
    if args.dataset_name is None and args.data_dir is None:
        raise ConfigError("give --dataset_name (a Hub dataset or a saved dataset folder) or --data_dir")
    if args.data_dir is not None:
        if not os.path.isdir(args.data_dir):
            raise ConfigError(f"--data_dir {args.data_dir!r} does not exist or is not a directory")
        if is_idx_dir(args.data_dir):
            ds, info = _load_idx(args.data_dir, args.split, resolution, channels, args.max_train_samples, fit)
            if len(ds) == 0:
                raise ConfigError(f"--data_dir {args.data_dir!r} holds no examples")
            return ds, info
        import datasets

        try:
            hf = datasets.load_dataset("imagefolder", data_dir=args.data_dir, split=args.split, cache_dir=args.cache_dir)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ConfigError(f"--data_dir {args.data_dir!r}: neither IDX files nor a readable image folder ({e})") from e
        source = f"imagefolder:{os.path.abspath(args.data_dir)}:{args.split}"
        display = f"{_folder_name(args.data_dir)} (local image folder, split {args.split})"
    else:
        import datasets

        path = args.dataset_name
        try:
            if os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_info.json"))
                                        or os.path.isfile(os.path.join(path, "state.json"))
                                        or os.path.isfile(os.path.join(path, "dataset_dict.json"))):
                hf = datasets.load_from_disk(path)
                if isinstance(hf, datasets.DatasetDict):
                    hf = hf[args.split]
                display = f"{_folder_name(path)} (saved dataset, split {args.split})"
            else:
                hf = datasets.load_dataset(path, args.dataset_config_name, split=args.split, cache_dir=args.cache_dir)
                name = _folder_name(path) if os.path.exists(path) else path
                config = f" ({args.dataset_config_name})" if args.dataset_config_name else ""
                display = f"{name}{config}, split {args.split}"
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--dataset_name {path!r} could not be loaded: {e}") from e
        source = f"dataset:{path}:{args.dataset_config_name}:{args.split}:{getattr(hf, '_fingerprint', '')}"
    if args.max_train_samples is not None:
        hf = hf.select(range(min(args.max_train_samples, len(hf))))
    if len(hf) == 0:
        raise ConfigError("the dataset has no examples")
    image_column, label_column, names = _pick_columns(hf, args.image_column, args.label_column)
    ds = HFImageDataset(hf, image_column, label_column, resolution, channels, fit)
    if label_column is not None and names is None:
        n = int(max(hf[label_column])) + 1
        names = [str(i) for i in range(n)]
    info = DataInfo(source=source, num_examples=len(ds), class_names=names if label_column else None,
                    display=display)
    return ds, info


def collate(examples):
    out = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if "class_labels" in examples[0]:
        out["class_labels"] = torch.stack([torch.as_tensor(e["class_labels"]) for e in examples]).long()
    return out


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample horizontally with probability 1/2 (generator on CPU)."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    if not mask.any():
        return x
    mask = mask.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(mask, x.flip(-1), x)


def dataset_fingerprint(dataset: Dataset, info: DataInfo, batch_size: int = 256) -> str:
    """A content hash of the preprocessed examples (pixels and labels), for cache keys."""
    import hashlib

    h = hashlib.sha256(info.source.encode())
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        h.update(batch["pixel_values"].numpy().tobytes())
        if "class_labels" in batch:
            h.update(batch["class_labels"].numpy().tobytes())
    return h.hexdigest()


__all__ = ["DataInfo", "load_image_dataset", "image_array", "collate", "random_flip", "read_idx", "is_idx_dir", "dataset_fingerprint",
           "FASHION_MNIST_CLASSES", "TensorImageDataset", "HFImageDataset"]
