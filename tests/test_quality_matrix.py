"""benchmarks/quality_matrix.sh without sampling (DRY_RUN=1): each lane's commands parse as eval_quality.py
arguments, the headline and few-step lanes run at each folder's saved scale and interval and name their files
by them, and RESULTS keeps everything, the table included, out of the repository's results."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

from test_train_common import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import eval_quality  # noqa: E402

FOLDERS = {"ldm_class": (4.0, [0, 4]), "guided": (14.0, [0, 10]), "ldm_text": (3.5, [0, None])}


def _lanes(tmp_path, *lanes):
    models, results = tmp_path / "models", tmp_path / "results"
    for name, (scale, interval) in FOLDERS.items():
        (models / name).mkdir(parents=True)
        (models / name / "model_index.json").write_text(json.dumps(
            {"default_guidance_scale": scale, "default_guidance_interval": interval}))
    (results / "quality").mkdir(parents=True)  # one measured row, so the table has something to show
    shutil.copy(REPO / "benchmarks" / "results" / "quality" / "floor_n2000.json", results / "quality")
    env = dict(os.environ, DRY_RUN="1", MODELS=str(models), RESULTS=str(results))
    subprocess.run(["bash", "benchmarks/quality_matrix.sh", *lanes], cwd=REPO, env=env, check=True,
                   capture_output=True, text=True)
    parser = eval_quality.build_parser()
    commands = {}
    for lane in lanes:
        lines = (results / "quality" / f"lane_{lane}.log").read_text().strip().splitlines()
        commands[lane] = [parser.parse_args(shlex.split(line)) for line in lines]
    return commands, models, results


def test_headline_and_few_step_lanes_run_at_each_folders_saved_scale_and_interval(tmp_path):
    before = hashlib.sha256((REPO / "benchmarks" / "results" / "quality.md").read_bytes()).hexdigest()
    lanes = ("few_step", "ldm_n10k", "guided_n10k", "ldm_text_n10k", "interval_text", "ldm")
    commands, models, results = _lanes(tmp_path, *lanes)
    for lane, args_list in commands.items():
        assert args_list, lane
        for args in args_list:
            assert args.threads == 1 and os.path.dirname(args.json) == str(results / "quality"), lane
            assert os.path.dirname(args.pipeline) == str(models), lane
    names = {lane: [os.path.basename(a.json) for a in args_list] for lane, args_list in commands.items()}
    assert names["few_step"] == ["ldm_class_opt5_w4_gi0-4.json", "ldm_class_opt10_w4_gi0-4.json",
                                 "ldm_class_deis2leading5_w4_gi0-4.json"]
    assert all(a.guidance_scale == 4 and a.guidance_interval is None for a in commands["few_step"])
    class_head, *every = commands["ldm_n10k"]
    assert names["ldm_n10k"][0] == "ldm_class_sdeuniform25_w4_gi0-4_n10k.json" and class_head.num_samples == 10000
    assert class_head.guidance_interval is None and class_head.steps == 25  # the folder's own interval
    assert [a.guidance_interval for a in every] == [["0", "inf"]] * 2  # beside it: guidance at every level
    assert names["guided_n10k"] == ["guided_sdeuniform25_s14_gi0-10_n10k.json"]
    assert names["ldm_text_n10k"] == ["ldm_text_sdeuniform25_w3.5_gi0-inf_n10k.json"]  # no upper end: inf
    for args, name in zip(commands["interval_text"], names["interval_text"]):  # the file says what was run
        low, high = args.guidance_interval
        assert name == f"ldm_text_sdeuniform25_w{args.guidance_scale:g}_gi{low}-{high}_n{args.num_samples}.json"
    assert all(a.guidance_interval == ["0", "inf"] for a in commands["ldm"])  # sweeps of the scale: every level
    table = (results / "quality.md").read_text()
    assert "floor_n2000.json" in table
    assert hashlib.sha256((REPO / "benchmarks" / "results" / "quality.md").read_bytes()).hexdigest() == before
