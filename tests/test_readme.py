"""Every Python block of the README runs, from the repository root, and warns about nothing.

Nothing downloads here: a block's Hub id is served by a tiny local model of the same kind (an 8x8
``DDPMPipeline`` on the cosine schedule for ``google/ddpm-cifar10-32``); everything else runs as written,
the shipped folders included. Warnings are both Python warnings and diffusers' / transformers' logged ones.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
HUB_STAND_INS = {"google/ddpm-cifar10-32"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, two spinning threads made the likelihood block 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme-hub")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(
        root / "ddpm-cifar10-32")
    return {"google/ddpm-cifar10-32": str(root / "ddpm-cifar10-32")}


def test_the_readme_has_its_usage_blocks():
    assert len(BLOCKS) >= 3
    found = {hub for block in BLOCKS for hub in re.findall(r'from_pretrained\("([^"]+)"', block)}
    assert found - HUB_STAND_INS <= {"space/models/ldm_class"}, found  # every other id has a stand-in here


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: BLOCKS[i].strip().splitlines()[0][:40])
def test_readme_block_runs_without_warnings(index, stand_ins, tmp_path, monkeypatch, caplog):
    code = BLOCKS[index]
    for hub_id, local in stand_ins.items():
        code = code.replace(f'"{hub_id}"', repr(local))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    # Relative paths in a block (space/models/...) are read from the repository root; files it writes land
    # in tmp_path.
    code = code.replace('.save("', f'.save("{tmp_path}{os.sep}')
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        namespace: dict = {"__name__": "readme"}
        exec(compile(code, f"README.md block {index}", "exec"), namespace)
    ours = [w for w in caught if not issubclass(w.category, DeprecationWarning) or "hf_ddm" in str(w.filename)]
    assert not ours, [f"{w.category.__name__}: {w.message}" for w in ours]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
