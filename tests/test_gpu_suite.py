"""benchmarks/gpu_suite.py: its dry run (the GPU code at tiny sizes on the CPU), the packing of the trained
folder into parts the device machine can hand back, and running from a checkout without installing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap

import torch

from test_train_common import REPO, run_subprocess

SUITE = REPO / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))


def test_dry_run_prints_every_table_and_ships_a_loadable_pipeline(tmp_path):
    out, work = tmp_path / "OUT", tmp_path / "work"
    proc = run_subprocess([sys.executable, SUITE, "--dry-run", "--json", out / "gpu_suite.json", "--work", work,
                           "--train-stage", "ddpm", "--train-seconds", "60", "--train-out", out / "ddpm"])
    md = proc.stdout
    for title in ("U-Net forward: hf_ddm UNet vs matched diffusers UNet2DModel", "Pipelines, 2 steps, fp16",
                  "Training images/s, bf16", "Training stage: pixel Fashion-MNIST DDPM"):
        assert f"### {title}" in md, title
    assert "failed" not in md and "skipped" not in md
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["failed"] == [] and report["dry_run"] is True
    rows = {name: sec["rows"] for name, sec in report["sections"].items()}
    forward = rows["U-Net forward: hf_ddm UNet vs matched diffusers UNet2DModel"]
    assert [r[0] for r in forward] == ["fp32", "bf16", "bf16 + compile (eager)"]
    assert all(r[4] > 0 for r in forward)  # ratio ours/diffusers
    assert len(rows["Pipelines, 2 steps, fp16"]) == 2
    training = rows["Training images/s, bf16"]
    assert sorted((r[0], r[1]) for r in training) == [("ddpm", "no"), ("ddpm", "yes"), ("ldm", "no"), ("ldm", "yes")]
    assert all(r[2] > 0 and r[3] > 0 for r in training)

    # What comes back from the device machine: few files of at most 16 MiB, at most 2 levels deep.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 2 for p in files)
    assert (out / "ddpm" / "samples.png").is_file()
    assert json.loads((out / "ddpm" / "train_summary.json").read_text())["global_step"] == 4

    # `cat ddpm_pipeline.tar.part-* | tar -x` gives a pipeline folder that loads and samples
    parts = sorted((out / "ddpm").glob("ddpm_pipeline.tar.part-*"))
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    from hf_ddm.pipelines import PixelDiffusionPipeline

    pipe = PixelDiffusionPipeline.from_pretrained(tmp_path / "unpacked" / "ddpm")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 1)


def test_pack_folder_splits_into_small_parts_and_leaves_out_training_state(tmp_path):
    from gpu_train_stage import pack_folder

    run = tmp_path / "ddpm"
    (run / "unet").mkdir(parents=True)
    (run / "unet" / "weights.safetensors").write_bytes(torch.randn(2000).numpy().tobytes())
    (run / "model_index.json").write_text("{}")
    for skipped in ("checkpoint-100", "logs", "samples"):
        (run / skipped).mkdir()
        (run / skipped / "big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "out").mkdir()
    parts = pack_folder(run, tmp_path / "out" / "p.tar", part_bytes=1000)
    assert len(parts) > 1 and all(p.stat().st_size <= 1000 for p in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        names = set(tar.getnames())
    assert names == {"ddpm", "ddpm/unet", "ddpm/unet/weights.safetensors", "ddpm/model_index.json"}


def test_suite_maps_hf_ddm_pipelines_from_a_plain_checkout(tmp_path):
    """On the GPU machine hf_ddm is not installed: `hf_ddm.pipelines` (setuptools maps it to pipelines/) must
    still import. Simulated by refusing the installed mapping."""
    code = textwrap.dedent(f"""
        import sys
        class Refuse:  # what an uninstalled checkout looks like: no hf_ddm.pipelines next to hf_ddm/
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == "hf_ddm.pipelines":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Refuse)
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "benchmarks")!r}]
        import gpu_suite
        gpu_suite.ensure_hf_ddm_pipelines()
        sys.meta_path.remove(Refuse)
        from hf_ddm.pipelines import PixelDiffusionPipeline
        import hf_ddm.pipelines.pixel_pipeline as m
        print(sys.modules["hf_ddm.pipelines"].__file__, m.__file__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    init, pixel = proc.stdout.split()
    assert init == str(REPO / "pipelines" / "__init__.py") and pixel == str(REPO / "pipelines" / "pixel_pipeline.py")


def test_training_stage_falls_back_to_eager_when_compilation_fails(tmp_path, capsys):
    """A GPU image without a working compiler must still produce the trained model."""
    import gpu_suite

    gpu_suite.ensure_hf_ddm_pipelines()
    data = gpu_suite.synthetic_idx(tmp_path / "data", 16, 32)
    S = argparse_ns(**{**vars(gpu_suite.DRY), "compile_backend": "no_such_backend"})
    args = argparse_ns(data_dir=str(data), work=str(tmp_path / "work"), train_out=str(tmp_path / "out"))
    report = gpu_suite.Report()
    gpu_suite.train_stage(args, S, torch.device("cpu"), report, 60.0, True, deadline=float("inf"))
    assert "without --torch_compile" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["global_step"] == 4
    assert list((tmp_path / "out").glob("ddpm_pipeline.tar.part-*"))


def argparse_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)
