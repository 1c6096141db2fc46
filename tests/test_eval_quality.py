"""The sample-quality instrument (benchmarks/): Fréchet distance, precision/recall, the pinned
reference network, and eval_quality.py end to end on a tiny random pipeline."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import quality_metrics as qm  # noqa: E402
import reference_classifier as rc  # noqa: E402

needs_data = pytest.mark.skipif(
    not rc.dataset_available(),
    reason=f"Fashion-MNIST IDX files not found under {rc.DEFAULT_DATA_DIR} "
           "(install the Debian package: apt-get install dataset-fashion-mnist)",
)


# --- Fréchet distance ------------------------------------------------------------------------------

def test_frechet_distance_diagonal_closed_form():
    # Commuting covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert qm.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_general_gaussians():
    # Non-commuting full covariances: tr((S1 S2)^1/2) via a rotated copy with known answer.
    # S2 = R S1 R^T with R orthogonal -> W2^2 between N(0,S1) and N(0,S2) of equal spectra is
    # tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2); check against an independent computation.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    s1 = a @ a.T + 0.1 * np.eye(6)
    b = rng.normal(size=(6, 6))
    s2 = b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    m = r1 @ s2 @ r1
    wm, vm = np.linalg.eigh(m)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(vm @ np.diag(np.sqrt(wm)) @ vm.T)
    assert qm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    via_scipy = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2)).real
    assert qm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(via_scipy, rel=1e-8)


def test_frechet_distance_from_samples_matches_closed_form():
    rng = np.random.default_rng(1)
    n = 200_000
    x = rng.normal(size=(n, 2)) * [1.0, 2.0]
    y = rng.normal(size=(n, 2)) * [3.0, 1.0] + [0.5, 0.0]
    expected = 0.25 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert qm.frechet_distance_features(x, y) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_self_is_zero():
    x = np.random.default_rng(2).normal(size=(500, 32))
    assert abs(qm.frechet_distance_features(x, x)) < 1e-8
    # Singular covariance (fewer points than dimensions) still works.
    z = np.random.default_rng(3).normal(size=(10, 32))
    assert abs(qm.frechet_distance_features(z, z)) < 1e-6


def test_frechet_distance_extrapolated_removes_the_small_sample_bias():
    # Samples of N(delta, S) against many of N(0, S): the true FD is |delta|^2; at N = 600 in 32
    # dimensions the plain estimate is biased upward by several times that, the extrapolation is not.
    rng = np.random.default_rng(4)
    d, n = 32, 600
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    cov_root = a + np.eye(d)
    ref = rng.normal(size=(20_000, d)) @ cov_root.T
    delta = np.zeros(d)
    delta[:4] = 0.25
    true_fd = float(delta @ delta)
    fd_n, fd_inf = [], []
    for seed in range(10):
        x = np.random.default_rng(100 + seed).normal(size=(n, d)) @ cov_root.T + delta
        fd_n.append(qm.frechet_distance_features(x, ref))
        fd_inf.append(qm.frechet_distance_extrapolated(x, ref, seed=seed)["fd_inf"])
    bias_n, bias_inf = np.mean(fd_n) - true_fd, np.mean(fd_inf) - true_fd
    assert bias_n > 1.5 * true_fd  # the plain small-N estimate is far off ...
    assert abs(bias_inf) < 0.25 * bias_n  # ... the extrapolated one is not (on average: it is noisier)
    with pytest.raises(ValueError, match="need more than"):
        qm.frechet_distance_extrapolated(ref[:40], ref)  # 40 <= 2 D: nothing to extrapolate from


# --- precision / recall ----------------------------------------------------------------------------

def test_precision_recall_identical_sets():
    x = np.random.default_rng(4).normal(size=(300, 8))
    assert qm.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 100.0
    assert qm.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_mode_dropping():
    # Fake covers one of two real modes: precision ~1, recall ~0.5.
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + 50])
    fake = rng.normal(size=(800, 2))
    p, r = qm.precision_recall(real, fake, k=3)
    assert p > 0.95 and 0.4 < r < 0.55


def test_density_coverage():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 8))
    m = qm.manifold_metrics(x, x.copy(), k=3)
    assert m["coverage"] == 1.0 and m["precision"] == 1.0 and m["density"] >= 1.0
    far = qm.manifold_metrics(x, x + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Same distribution, independent draws: density ~1, coverage high.
    m = qm.manifold_metrics(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)), k=3)
    assert 0.85 < m["density"] < 1.15 and m["coverage"] > 0.85


# --- the reference network -------------------------------------------------------------------------

def test_reference_loads_and_is_pinned():
    model = rc.load_reference()
    assert rc.PINNED_SHA256[model.version] == model.sha256
    assert os.path.getsize(os.path.join(rc.REFERENCE_DIR, rc.WEIGHTS_NAME)) < 2 * 2**20
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert model.features(x).shape == (4, 128)
        assert model.logits(x).shape == (4, 10)
        torch.testing.assert_close(model.features(x), model.features(rc.pad_to_32(x)))


def test_reference_refuses_tampered_weights(tmp_path):
    dst = tmp_path / "ref"
    shutil.copytree(rc.REFERENCE_DIR, dst)
    rc.load_reference(str(dst))  # an untouched copy loads
    w = dst / rc.WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01  # flip one bit of the last weight
    w.write_bytes(bytes(data))
    with pytest.raises(rc.ReferenceTampered):
        rc.load_reference(str(dst))
    # Re-recording the tampered file's hash in config.json does not help: the hash is pinned in code.
    cfg = json.loads((dst / rc.CONFIG_NAME).read_text())
    cfg["sha256"] = rc.sha256_file(str(w))
    (dst / rc.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(rc.ReferenceTampered):
        rc.load_reference(str(dst))


def test_train_refuses_to_overwrite(tmp_path):
    dst = tmp_path / "ref"
    shutil.copytree(rc.REFERENCE_DIR, dst)
    before = rc.sha256_file(str(dst / rc.WEIGHTS_NAME))
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        rc.main(["--train", "--out_dir", str(dst)])
    assert rc.sha256_file(str(dst / rc.WEIGHTS_NAME)) == before


@needs_data
def test_reference_classifies_real_test_images():
    model = rc.load_reference()
    images, labels = rc.load_fashion_mnist("test")
    idx = np.arange(0, 10000, 50)  # 200 images spread over the test set
    acc = rc.accuracy(model, rc.to_reference_input(images[idx]), torch.from_numpy(labels[idx]))
    assert acc >= 0.90


# --- eval_quality end to end -----------------------------------------------------------------------

@needs_data
def test_eval_quality_end_to_end(tmp_path):
    import eval_quality
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.vp import VPScheduler

    torch.manual_seed(0)
    unet = UNet(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), mid_block_attention=False, norm_num_groups=4, attention_head_dim=8)
    PixelDiffusionPipeline(unet=unet, scheduler=VPScheduler(num_train_timesteps=20)).save_pretrained(tmp_path / "pipe")
    out = tmp_path / "res.json"
    res = eval_quality.main([str(tmp_path / "pipe"), "--scheduler", "vp-ddim", "--num_samples", "16", "--steps", "2",
                             "--batch_size", "8", "--test_samples", "500", "--nll_samples", "4", "--nll_batch_size", "4",
                             "--floor", "--json", str(out), "--grid", str(tmp_path / "grid.png")])
    saved = json.loads(out.read_text())
    for key in ("fd", "precision", "recall", "density", "coverage", "class_accuracy", "bits_per_dim", "bits_per_dim_method", "nfe",
                "num_samples", "scheduler_class", "reference_version", "reference_sha256", "floor", "speckled_fraction"):
        assert key in saved, key
    assert saved["num_samples"] == 16 and saved["nfe"] == 2 and saved["scheduler_class"] == "VPScheduler"
    assert saved["scheduler_config"]["sampler"] == "ddim"
    assert saved["class_accuracy"] is None  # unconditional
    assert np.isfinite(saved["fd"]) and 0 <= saved["precision"] <= 1 and 0 <= saved["recall"] <= 1
    assert np.isfinite(saved["bits_per_dim"]) and "ddpm_bound" in saved["bits_per_dim_method"]
    assert saved["floor"]["num_samples"] == 16 and saved["floor"]["fd"] < saved["fd"]
    assert 0 <= saved["speckled_fraction"] <= 1 and 0 <= saved["floor"]["speckled_fraction"] <= 1
    assert res["fd"] == saved["fd"]
    assert saved["command"].startswith("python benchmarks/eval_quality.py ") and "--floor" in saved["command"]
    assert str(tmp_path) not in out.read_text()  # no path of the machine that ran it
    assert saved["pipeline"] == "pipe" and "--json res.json" in saved["command"]
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")  # 16 samples, 10 per row: 2 rows of 32 px + 1 px borders
    assert grid.size == (10 * 33 + 1, 2 * 33 + 1)
    assert saved["guidance_interval"] is None
    with pytest.raises(SystemExit, match="--guidance_interval: .* samples unconditionally"):  # not silently ignored
        eval_quality.main([str(tmp_path / "pipe"), "--num_samples", "8", "--guidance_interval", "0", "1"])


def test_eval_quality_records_the_guidance_interval_it_ran(tmp_path):
    """The folder's default_guidance_interval unless --guidance_interval names one; the samples differ (20 train steps:
    sigma <= 0.47, so 0.2 splits the steps)."""
    import eval_quality
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.vp import VPScheduler

    torch.manual_seed(0)
    unet = UNet(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), mid_block_attention=False, norm_num_groups=4, attention_head_dim=8,
                num_class_embeds=10)
    PixelDiffusionPipeline(unet=unet, scheduler=VPScheduler(num_train_timesteps=20), default_guidance_scale=3.0,
                           default_guidance_interval=(0, 0.2)).save_pretrained(tmp_path / "pipe")
    base = [str(tmp_path / "pipe"), "--scheduler", "vp-ddim", "--num_samples", "10", "--steps", "4", "--batch_size", "10",
            "--test_samples", "300", "--guidance_scale", "3"]
    default = eval_quality.main(base + ["--features", str(tmp_path / "a.npz")])
    every = eval_quality.main(base + ["--guidance_interval", "0", "inf", "--features", str(tmp_path / "b.npz")])
    assert default["guidance_interval"] == [0.0, 0.2] and every["guidance_interval"] == [0.0, None]
    assert not np.allclose(np.load(tmp_path / "a.npz")["features"], np.load(tmp_path / "b.npz")["features"])
    with pytest.raises(ValueError, match="guidance_interval"):
        eval_quality.main(base + ["--guidance_interval", "5", "1"])


def test_ode_bits_per_dim_dequantises_inside_the_bin(monkeypatch):
    """A continuous density at the 8-bit grid points is not a likelihood of discrete data; the images must be
    dequantised uniformly inside their bins before the ODE likelihood (which then bounds the discrete NLL)."""
    import eval_quality

    import hf_ddm.likelihood as lik
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.sde import SDEScheduler

    torch.manual_seed(0)
    unet = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,), layers_per_block=1,
                attention_levels=(), mid_block_attention=False, norm_num_groups=4, attention_head_dim=8)
    pipe = PixelDiffusionPipeline(unet=unet, scheduler=SDEScheduler(sde="subvp"))
    x = (torch.randint(0, 256, (3, 1, 8, 8)).float() / 255) * 2 - 1  # on the 8-bit grid
    seen = {}
    real = lik.ode_log_likelihood

    def spy(model, scheduler, sample, **kw):
        seen["sample"], seen["t_start"] = sample.clone(), kw.get("t_start")
        return real(model, scheduler, sample, **{**kw, "num_steps": 2})

    monkeypatch.setattr(lik, "ode_log_likelihood", spy)
    bpd, se, method, _ = eval_quality.bits_per_dim(pipe, pipe.scheduler, ("none", 0, None), x, None, 3, 0, 2, 1)
    moved = seen["sample"] - x
    assert moved.abs().max() <= 1 / 255 + 1e-6 and moved.abs().min() > 0  # inside the bin, off the grid
    assert seen["t_start"] == 1e-5 and "dequantised" in method and np.isfinite(bpd)


def test_quality_table_ratios_use_the_right_floors(tmp_path):
    import quality_table

    def floor(n, fd, fd_inf):
        return {"command": f"floor {n}", "floor": {"num_samples": n, "fd": fd, "fd_inf": fd_inf}}

    row = {"command": "row", "pipeline": "space/models/ddpm", "scheduler": "vp-ddpm", "steps": 250, "nfe": 250,
           "conditioning": "none", "guidance_scale": 1.0, "num_samples": 500, "fd": 4.0, "fd_inf": 2.5,
           "precision": 0.8, "recall": 0.7, "class_accuracy": None, "bits_per_dim": None}
    interval = dict(row, conditioning="class", guidance_scale=3.0, guidance_interval=[0, 5], command="interval row")
    old = dict(row, num_samples=1000, fd=3.0, command="old row")
    del old["fd_inf"]  # results written before FD∞ existed
    paths = []
    speckled = dict(floor(10000, 0.1, 0.05), command="floor 10000")
    speckled["floor"]["speckled_fraction"] = 0.016
    row["speckled_fraction"] = 0.25
    for i, res in enumerate([floor(500, 2.0, 0.3), speckled, row, old, interval]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(res))
    lines = quality_table.table([str(p) for p in paths]).splitlines()
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    # equal-N floor (500) for FD, the largest-N floor's FD∞ (10000: 0.05) for FD∞
    assert cells[5:10] == ["4.000", "2.000", "2.0", "2.500", "50"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[5:10] == ["3.000", "—", "—", "—", "—"]  # no floor at N = 1000, no FD∞ recorded
    assert [c.strip() for c in lines[2].split("|")[1:-1]][13] == "25.0%" and cells[13] == "—"
    assert "real training images: 1.6%" in "\n".join(lines)
    assert "- `3.json`: `old row`" in lines
    assert [c.strip() for c in lines[4].split("|")[1:-1]][3] == "3 (σ ≤ 5)"
    assert quality_table.interval_phrase([0.3, None]) == " (σ ≥ 0.3)" and quality_table.interval_phrase([0, None]) == ""


# --- speckle -----------------------------------------------------------------------------------------

def test_impulse_pixels_counts_lone_dots_not_edges_or_texture():
    """Salt on the black background and pepper inside a flat garment are counted; an edge, a stripe and a
    checkerboard texture (neighbours not flat) are not."""
    img = -torch.ones(1, 1, 16, 16)
    img[0, 0, 8:, :] = 0.8  # a garment filling the lower half: its top row is an edge
    img[0, 0, 2, 3] = img[0, 0, 5, 12] = 1.0  # salt on the background
    img[0, 0, 12, 7] = -0.6  # pepper inside the garment
    assert qm.impulse_pixels(img).tolist() == [3]
    stripe = -torch.ones(1, 1, 16, 16)
    stripe[0, 0, :, 7] = 1.0  # a one-pixel line: its neighbourhood is not flat
    checker = ((torch.arange(16)[:, None] + torch.arange(16)) % 2).float().mul(2).sub(1)[None, None]
    assert qm.impulse_pixels(torch.cat([stripe, checker])).tolist() == [0, 0]
    batch = torch.cat([img, stripe, img, checker])
    assert qm.speckled_fraction(batch) == 0.5 and qm.speckled_fraction(batch, min_pixels=4) == 0.0


@needs_data
def test_real_images_are_rarely_speckled():
    images, _ = rc.load_fashion_mnist("test")
    x = rc.to_reference_input(images[:2000])
    assert qm.speckled_fraction(x) < 0.03


def test_a_named_scheduler_runs_its_own_grid_not_the_folders_optimized_steps():
    """A row labelled "sde-multistep (uniform t) 10" measures that grid: the folder's optimized steps belong to
    the default rows (``--scheduler`` left out), which keep them."""
    import eval_quality

    from hf_ddm.schedulers.sde import SDEScheduler

    saved = SDEScheduler(num_train_timesteps=1000, solver="multistep", time_grid="uniform", denoise_final=False,
                         optimized_timesteps={"4": [900, 600, 300, 50]})
    saved.set_timesteps(4)
    named = eval_quality.make_scheduler("sde-multistep", saved.config, {"time_grid": "uniform", "denoise_final": False})
    named.set_timesteps(4)
    assert named.config.get("optimized_timesteps") is None
    assert named.timesteps.tolist() != saved.timesteps.tolist()
    assert eval_quality.make_scheduler("default", saved.config, {}) is None  # the pipeline keeps its own


@needs_data
def test_ldm_curve_measures_each_checkpoints_ema_unet_once(tmp_path):
    """benchmarks/ldm_curve.py: the base pipeline as the first row, then each checkpoint's EMA U-Net (not its raw
    weights) in a copy of it; a second call measures nothing again; no machine path in what it writes."""
    import ldm_curve
    from safetensors.torch import save_file

    from hf_ddm.models import VAE, UNet
    from hf_ddm.pipelines import LatentDiffusionPipeline
    from hf_ddm.schedulers.vp import VPScheduler
    from hf_ddm.training.checkpoint import MANIFEST_KEY, STATE_FILE, manifest

    torch.manual_seed(0)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    kw = dict(sample_size=16, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              attention_levels=(), mid_block_attention=False, norm_num_groups=4, attention_head_dim=8,
              num_class_embeds=10)
    base_unet, ema_unet = UNet(**kw), UNet(**kw)
    LatentDiffusionPipeline(unet=base_unet, vae=vae, scheduler=VPScheduler(num_train_timesteps=20),
                            class_names=[f"c{i}" for i in range(10)]).save_pretrained(tmp_path / "base")
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    save_file(base_unet.state_dict(), ckpt / "model.safetensors")  # the raw weights: the base's
    save_file(ema_unet.state_dict(), ckpt / "ema.safetensors")
    (ckpt / STATE_FILE).write_text(json.dumps({"global_step": 2, "train_seconds": 36.0, MANIFEST_KEY: manifest(str(ckpt))}))
    out = tmp_path / "curve"
    argv = [str(tmp_path / "run"), str(tmp_path / "base"), str(out), "--base_step", "10", "--steps", "2",
            "--num_samples", "16", "--batch_size", "8", "--test_samples", "500"]
    ldm_curve.main(argv)
    rows = json.loads((tmp_path / "curve.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [10, 12] and rows[1]["train_hours"] == pytest.approx(0.01)
    assert rows[0]["fd"] != rows[1]["fd"]  # the EMA U-Net sampled, not the raw (= base) weights
    assert all(0 <= r["class_accuracy"] <= 1 and np.isfinite(r["fd"]) for r in rows)
    md = (tmp_path / "curve.md").read_text()
    assert "| 12 | 0.01 |" in md and str(tmp_path) not in md
    calls = []
    ldm_curve.eval_quality.main, real = (lambda a: calls.append(a)), ldm_curve.eval_quality.main
    try:
        ldm_curve.main([*argv, "--note", "N = 10,000 reads higher"])
    finally:
        ldm_curve.eval_quality.main = real
    assert calls == [] and json.loads((tmp_path / "curve.json").read_text())["rows"] == rows
    md = (tmp_path / "curve.md").read_text()
    assert md.endswith("N = 10,000 reads higher\n") and md.count("reads higher") == 1


@needs_data
def test_vae_curve_measures_each_checkpoint_once_and_skips_a_pruned_one(tmp_path, capsys):
    """benchmarks/vae_curve.py: a row per checkpoint (eval_vae's measurement of its weights), none measured
    twice across calls, a checkpoint pruned before it is read skipped with a message, the note kept."""
    import vae_curve
    from safetensors.torch import save_file

    from hf_ddm.models import VAE
    from hf_ddm.training.checkpoint import MANIFEST_KEY, MODEL_CONFIG_FILE, STATE_FILE, manifest

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    vae = VAE(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16), layers_per_block=1,
              norm_num_groups=4)
    (run / MODEL_CONFIG_FILE).write_text(json.dumps(dict(vae.config)))
    for step in (3, 6):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir()
        save_file({f"vae.{k}": v.contiguous() for k, v in vae.state_dict().items()}, ckpt / "model.safetensors")
        (ckpt / STATE_FILE).write_text(json.dumps({"global_step": step, "train_seconds": 360.0 * step,
                                                   MANIFEST_KEY: manifest(str(ckpt))}))
    (run / "checkpoint-6" / "model.safetensors").write_bytes(b"pruned")  # fails its manifest: as if half-deleted
    out = tmp_path / "curve"
    argv = [str(run), str(out), "--num_samples", "64", "--note", "step 3 ships"]
    vae_curve.main(argv)
    assert "checkpoint-6 went before it was read" in capsys.readouterr().err
    saved = json.loads((tmp_path / "curve.json").read_text())
    assert [r["step"] for r in saved["rows"]] == [3] and saved["rows"][0]["train_hours"] == pytest.approx(0.3)
    assert np.isfinite(saved["rows"][0]["fd_reconstructions_vs_test"]) and saved["note"] == "step 3 ships"
    calls = []
    vae_curve.eval_vae.measure, real = (lambda *a: calls.append(a)), vae_curve.eval_vae.measure
    try:
        vae_curve.main([str(run), str(out), "--num_samples", "64"])
    finally:
        vae_curve.eval_vae.measure = real
    again = json.loads((tmp_path / "curve.json").read_text())
    assert calls == [] and again["rows"] == saved["rows"] and again["note"] == "step 3 ships"
    md = (tmp_path / "curve.md").read_text()
    assert "| 3 | 0.30 |" in md and "step 3 ships" in md and str(tmp_path) not in md


def test_ldm_curve_puts_a_text_runs_checkpoint_encoder_beside_its_ema_unet(tmp_path):
    """A text LDM's run trains its text encoder with the U-Net: the measured copy holds the checkpoint's EMA U-Net
    and its text encoder (Accelerate's ``model_1.safetensors``), not the base's."""
    import ldm_curve
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from hf_ddm.models import UNet
    from hf_ddm.training.checkpoint import MANIFEST_KEY, STATE_FILE, manifest
    from test_pipelines import tiny_text_pipe

    pipe = tiny_text_pipe()
    pipe.save_pretrained(tmp_path / "base")
    unet, enc = pipe.unet, pipe.text_encoder
    with torch.no_grad():
        ema = {k: v + 0.5 for k, v in unet.state_dict().items()}
        trained_enc = {k: v + 0.25 for k, v in enc.state_dict().items()}
    ckpt = tmp_path / "run" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    save_file(unet.state_dict(), ckpt / "model.safetensors")
    save_file(trained_enc, ckpt / "model_1.safetensors")
    save_file(ema, ckpt / "ema.safetensors")
    (ckpt / STATE_FILE).write_text(json.dumps({"global_step": 4, "train_seconds": 7.2, MANIFEST_KEY: manifest(str(ckpt))}))
    seen = {}

    def fake_eval(argv):
        folder = argv[0]
        seen["argv"] = argv
        seen["unet"] = UNet.from_pretrained(os.path.join(folder, "unet")).state_dict()
        seen["enc"] = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).state_dict()
        return {"fd": 1.0, "fd_inf": 0.9, "precision": 0.5, "recall": 0.5, "class_accuracy": 0.9}

    ldm_curve.eval_quality.main, real = fake_eval, ldm_curve.eval_quality.main
    try:
        ldm_curve.main([str(tmp_path / "run"), str(tmp_path / "base"), str(tmp_path / "curve"), "--guidance_interval",
                        "0", "inf"])
    finally:
        ldm_curve.eval_quality.main = real
    interval = seen["argv"].index("--guidance_interval")  # measured where asked, not at the base's saved interval
    assert seen["argv"][interval + 1:interval + 3] == ["0", "inf"]
    assert "guidance 3 at every noise level" in (tmp_path / "curve.md").read_text()
    assert all(torch.equal(seen["unet"][k], ema[k]) for k in ema)
    assert all(torch.equal(seen["enc"][k], v) for k, v in trained_enc.items())
    assert [r["step"] for r in json.loads((tmp_path / "curve.json").read_text())["rows"]] == [4]
