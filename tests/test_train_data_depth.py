"""Image data at its real depth: 16-bit greyscale PNGs (PIL mode I;16) load scaled by 65535, not clipped by
``convert("L")``; a truncated image stops with an error that names its file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddm.training.args import ConfigError
from hf_ddm.training.data import HFImageDataset


def _dataset(paths):
    import datasets

    return datasets.Dataset.from_dict({"image": [str(p) for p in paths]}).cast_column("image", datasets.Image())


def _png16(path, values):
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)  # mode I;16
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I") and np.asarray(im).max() == np.max(values)  # really 16-bit on disk
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_loads_at_its_real_depth(tmp_path, channels):
    values = np.array([[0, 32768, 65535, 16384]] * 4, dtype=np.uint16)
    ds = HFImageDataset(_dataset([_png16(tmp_path / "a.png", values)]), "image", None, 4, channels)
    x = ds[0]["pixel_values"]
    assert x.shape == (channels, 4, 4)
    expected = torch.tensor(values.astype(np.float64) / 32767.5 - 1.0, dtype=torch.float32)
    torch.testing.assert_close(x, expected.expand(channels, 4, 4))
    assert abs(x[0, 0, 1].item()) < 1e-4  # mid-grey stays mid-grey (was white: +1)


def test_8bit_png_unchanged(tmp_path):
    values = np.array([[0, 128, 255, 64]] * 4, dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "b.png")
    x = HFImageDataset(_dataset([tmp_path / "b.png"]), "image", None, 4, 1)[0]["pixel_values"]
    torch.testing.assert_close(x[0], torch.tensor(values / 127.5 - 1.0, dtype=torch.float32))


def test_truncated_image_names_its_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(good)
    bad = tmp_path / "broken-0042.png"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    ds = HFImageDataset(_dataset([good, bad]), "image", None, 32, 1)
    assert ds[0]["pixel_values"].shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="broken-0042.png"):
        ds[1]


def test_32bit_float_image_is_refused_by_name(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ConfigError, match="float.tiff.*32-bit"):
        HFImageDataset(_dataset([path]), "image", None, 4, 1)[0]
