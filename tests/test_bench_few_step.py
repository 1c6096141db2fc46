"""benchmarks/bench_few_step_models.py --quick on tiny models built from configs (no shipped weights): a guided
latent model on a discrete schedule (every row of the table) and a continuous sub-VP SDE (no diffusers rows)."""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from hf_ddm.models import VAE, UNet  # noqa: E402
from hf_ddm.pipelines import LatentDiffusionPipeline, PixelDiffusionPipeline  # noqa: E402
from hf_ddm.schedulers import SDEScheduler  # noqa: E402

LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _unet(channels, size, **kw):
    torch.manual_seed(0)
    return UNet(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                layers_per_block=1, attention_levels=(), norm_num_groups=4, attention_head_dim=8,
                mid_block_attention=False, **kw)


def _folders(root):
    steps = {"5": [999.0, 800.0, 600.0, 400.0, 200.0], "10": np.linspace(999, 99, 10).round().tolist()}
    torch.manual_seed(1)
    vae = VAE(in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    latent = LatentDiffusionPipeline(unet=_unet(2, 4, num_class_embeds=3), vae=vae, scheduler=SDEScheduler.from_config(
        LINEAR, time_grid="uniform", denoise_final=False, optimized_timesteps=steps))
    latent.register_default_guidance_scale(2.0)
    latent.save_pretrained(os.path.join(root, "tiny_latent"))
    sde = SDEScheduler(sde="subvp", prediction_type="v_prediction",
                       optimized_timesteps={"5": [999.0, 700.0, 400.0, 200.0, 50.0]})
    PixelDiffusionPipeline(_unet(1, 8), sde).save_pretrained(os.path.join(root, "tiny_sde"))


def test_quick_mode_table_on_tiny_models(tmp_path, capsys):
    import bench_few_step_models as bench

    _folders(tmp_path)
    out, js = tmp_path / "table.md", tmp_path / "out.json"
    assert bench.main(["--quick", "--root", str(tmp_path), "--models", "tiny_latent", "tiny_sde", "--batch", "2",
                       "--ref-steps", "24", "--out", str(out), "--json", str(js)]) == 0
    text = out.read_text()
    assert text.splitlines()[2].startswith("`OMP_NUM_THREADS=1 python benchmarks/bench_few_step_models.py --quick")
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("| model |")]
    assert len(tables) == 2  # the decoded images' error; the calibration objective (final latents' RMS)
    rows = [line for line in tables[0] if line.startswith("| tiny")]
    assert len([line for line in tables[1] if line.startswith("| tiny")]) == 4
    assert [r.split(" | ")[:2] for r in rows] == [["| tiny_latent", "5"], ["| tiny_latent", "10"],
                                                  ["| tiny_sde", "5"], ["| tiny_sde", "10"]]
    assert all(len(r.split(" | ")) == 8 for r in rows)
    assert "DPM++" in rows[0] or "UniPC" in rows[0] or "DEIS" in rows[0]
    assert "no discrete counterpart" in rows[2] and rows[3].split(" | ")[2] == "n/a"  # sde: no 10-step list
    results = json.loads(js.read_text())
    for name in ("tiny_latent", "tiny_sde"):
        rerun = results[name]["reference_rerun"]  # the reference against itself
        assert rerun["mae"] == rerun["rms"] == rerun["latent_rms"] == 0.0
        assert "reference run again: error 0.0000" in text
    latent = results["tiny_latent"]
    assert latent["guidance_scale"] == 2.0 and latent["seed"] == 1000
    for nfe in ("5", "10"):
        row = latent["nfe"][nfe]
        assert row["optimized"]["calls"] == int(nfe) and row["diffusers_on_optimized"]["calls"] == int(nfe)
        assert len(row["fixed"]) == 12 and len(row["diffusers"]) == 36
        assert all(v["calls"] <= int(nfe) for v in row["diffusers"].values() if "calls" in v)
    assert results["tiny_sde"]["diffusers_config"] is None and not results["tiny_sde"]["nfe"]["5"]["diffusers"]
    assert "same_as" in latent["nfe"]["5"]["diffusers"]["DEIS-2 (trailing, karras)"]  # Karras ignores spacing
    assert capsys.readouterr().out.count("| tiny_latent |") == 4  # printed too
    assert bench.main(["--merge", str(js), "--out", str(tmp_path / "merged.md")]) == 0  # tables from the JSON alone
    assert (tmp_path / "merged.md").read_text() == text


def test_baselines_from_an_earlier_run_resample_only_the_optimized_rows(tmp_path):
    """--baselines-from: (b) and (c) come from the earlier JSON (same model and noise), (a) is sampled again
    (here: equal, the folder unchanged); a run that measured something else (another seed) is refused."""
    import bench_few_step_models as bench
    import pytest

    _folders(tmp_path)
    first = tmp_path / "first.json"
    common = ["--quick", "--root", str(tmp_path), "--models", "tiny_latent", "--batch", "2", "--ref-steps", "24"]
    assert bench.main([*common, "--json", str(first)]) == 0
    again = tmp_path / "again.json"
    assert bench.main([*common, "--baselines-from", str(first), "--json", str(again), "--out", str(tmp_path / "t.md")]) == 0
    old, new = (json.loads(p.read_text())["tiny_latent"] for p in (first, again))
    for nfe in ("5", "10"):
        assert new["nfe"][nfe]["fixed"] == old["nfe"][nfe]["fixed"]
        assert new["nfe"][nfe]["diffusers"] == old["nfe"][nfe]["diffusers"]
        assert new["nfe"][nfe]["optimized"] == old["nfe"][nfe]["optimized"]
    assert new["baselines_from"] == "first.json" and "only (a) and (d) sampled again" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit, match="same seed"):
        bench.main([*common, "--seed", "7", "--baselines-from", str(first)])
