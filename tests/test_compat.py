"""Folders saved by hf_ddm 0.1.0 (tests/fixtures/saved_v0_1, written by make_saved_v0_1.py) must keep
loading with the current code and give the same images: module paths recorded in model_index.json,
config keys and weight layouts are public API."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from hf_ddm.pipelines import LatentDiffusionPipeline, PixelDiffusionPipeline

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "saved_v0_1")
CALLS = {
    "pixel_vp": (PixelDiffusionPipeline, dict(class_labels=[0, 2], guidance_scale=2.0)),
    "pixel_sde": (PixelDiffusionPipeline, dict(batch_size=2)),
    "pixel_ve": (PixelDiffusionPipeline, dict(batch_size=2)),
    "latent_class": (LatentDiffusionPipeline, dict(class_labels=[1, 2])),
}


# The three pixel folders carried the same 0.1.0 pipeline file: the repository stores it once, beside them,
# and each test folder gets it back as 0.1.0 saved it.
SHARED_FILES = {"pixel_vp": "pixel_pipeline.py", "pixel_sde": "pixel_pipeline.py", "pixel_ve": "pixel_pipeline.py"}


@pytest.mark.parametrize("name", list(CALLS))
def test_v0_1_folder_loads_and_reproduces(name, tmp_path):
    folder = str(tmp_path / name)
    shutil.copytree(os.path.join(HERE, name), folder)
    if name in SHARED_FILES:
        shutil.copy(os.path.join(HERE, SHARED_FILES[name]), os.path.join(folder, SHARED_FILES[name]))
    cls, kw = CALLS[name]
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["unet"] == ["hf_ddm.models.unet", "UNet"]
    expected = np.load(os.path.join(folder, "expected_images.npy"))
    for loader in (lambda: cls.from_pretrained(folder),
                   lambda: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)):
        pipe = loader()
        pipe.set_progress_bar_config(disable=True)
        images = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np", **kw).images
        np.testing.assert_allclose(images, expected, atol=2e-5)
