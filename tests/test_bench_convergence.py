"""benchmarks/bench_convergence.py: its smoke mode runs end to end (every objective, tiny budget), its
time-to-FD arithmetic, and its recipe is the shipped ddpm recipe's."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_convergence as bc  # noqa: E402
import reference_classifier as rc  # noqa: E402


def test_time_to_fd_interpolates_log_fd_in_time():
    pts = [{"cpu_s": 60, "fd": 8.0}, {"cpu_s": 120, "fd": 2.0}]
    assert bc.time_to_fd(pts, 8.0) == 60
    assert bc.time_to_fd(pts, 4.0) == pytest.approx(90)  # halfway in log FD
    assert bc.time_to_fd(pts, 1.0) == math.inf


def test_recipe_is_the_shipped_ddpm_stage():
    text = (REPO / "train" / "fashion_mnist_recipe.sh").read_text()
    stage = text[text.index("    ddpm)"):text.index(";;", text.index("    ddpm)"))]
    # The recipe scales its values through helpers ("$(batch 64)", "$(lr 2e-4)" ...): read the scale-1 value.
    stage = re.sub(r'"\$\((?:batch|lr|start|steps) ([^)]+)\)"', r"\1", stage)
    flags = dict(re.findall(r"(--\w+) (?!\")([^\s\\]+)", stage))
    recipe = dict(zip(bc.RECIPE[::2], bc.RECIPE[1::2]))
    for flag in ("--block_out_channels", "--layers_per_block", "--attention_levels", "--norm_num_groups",
                 "--scheduler", "--train_batch_size", "--learning_rate", "--lr_warmup_steps"):
        assert recipe[flag] == flags[flag], flag
    assert "--use_ema" in bc.RECIPE and "--use_ema" in stage


@pytest.mark.skipif(not rc.dataset_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_smoke_mode_runs_every_objective(tmp_path, capsys):
    out = tmp_path / "convergence.md"
    bc.main(["--smoke", "--out", str(out)])
    table = out.read_text()
    for name in bc.VARIANTS:
        assert f"| {name} |" in table
    assert "ratio" in table and "| current | `(shipped)` |" in table
    assert table in capsys.readouterr().out


@pytest.mark.skipif(not rc.dataset_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_one_objective_without_baseline_saves_its_final_pipeline(tmp_path):
    from diffusers import DiffusionPipeline

    out = tmp_path / "convergence.md"
    bc.main(["--smoke", "--variants", "edm_v", "--save-final", str(tmp_path / "final"), "--out", str(out)])
    table = out.read_text()
    assert "| edm_v |" in table and "| current |" not in table and "ratio" not in table
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "final" / "edm_v", trust_remote_code=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 1) and float(abs(image).max()) <= 1.0


def test_unknown_objective_is_refused_by_name():
    with pytest.raises(SystemExit, match="nonsense"):
        bc.main(["--smoke", "--variants", "edm_v,nonsense"])
