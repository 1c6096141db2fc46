"""Where hf_ddm meets the Hub: no machine paths in anything saved, cards the Hub indexes with a snippet
that runs, the push flow of diffusers' examples (repo first, fast failure offline, checkpoint uploads),
and portable training outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from test_train_common import FAST, REPO, TINY_UNET, run_script, write_idx

SHIPPED = sorted(p for p in (REPO / "space" / "models").iterdir() if (p / "model_index.json").is_file())

# An absolute POSIX path in text: a "/" that does not continue a word, a relative path or a URL, followed by at
# least one more component ("/work/ckpt/x", "/usr/share/...", "/tmp/pytest-1/..."). The same pattern as
# train/ship_checkpoint.py's, written out again so that a change there cannot weaken this test.
ABSOLUTE = re.compile(r"(?<![\w.~:/<-])/(?:[\w.-]+/)+[\w.-]*")
TEXT_SUFFIXES = (".json", ".md", ".py", ".txt", ".yaml", ".yml")


def machine_paths(folder: Path, known=()):
    """[(file, match)] for every absolute path in a text file under ``folder``, and every occurrence of the
    ``known`` local paths (the test's tmp folder, the repository) in any file, binary ones included
    (TensorBoard event files, safetensors headers, checkpoints)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for k in known:
            if k.encode() in data:
                found.append((str(path.relative_to(folder)), k))
        if path.suffix in TEXT_SUFFIXES:
            found += [(str(path.relative_to(folder)), m) for m in ABSOLUTE.findall(data.decode("utf-8"))]
    return found


def test_path_pattern_catches_paths_and_spares_urls_and_relative_paths():
    text = ('"_name_or_path": "/work/ckpt/ddpm3", see https://huggingface.co/docs/x and runs/fmnist/vae, '
            "T-shirt/top, bits/dim, --data_dir /usr/share/datasets/fashion-mnist")
    assert ABSOLUTE.findall(text) == ["/work/ckpt/ddpm3", "/usr/share/datasets/fashion-mnist"]


def test_a_recorded_command_names_no_machine_path(tmp_path):
    """What the benchmarks write into results files: absolute paths by their last part, relative paths and
    Hub ids as given, quoted so the line runs again."""
    from hf_ddm.training.hub import recorded_arg, recorded_command

    line = recorded_command("python benchmarks/x.py", [str(tmp_path / "runs" / "vae8"), "space/models/ldm_class",
                                                       "--scheduler_kwargs", '{"a": 1}', "user/repo", 3])
    assert line == "python benchmarks/x.py vae8 space/models/ldm_class --scheduler_kwargs '{\"a\": 1}' user/repo 3"
    assert not ABSOLUTE.findall(line) and str(tmp_path) not in line
    assert recorded_arg("/usr/share/datasets/fashion-mnist/") == "fashion-mnist"


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_folders_name_no_machine_path(folder):
    assert machine_paths(folder, known=(str(REPO),)) == []


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_cards_carry_hub_metadata_and_true_usage(folder):
    data = ModelCard.load(folder / "README.md").data
    assert data.library_name == "diffusers" and data.license == "apache-2.0"
    text_model = (folder / "text_encoder").is_dir()
    assert data.pipeline_tag == ("text-to-image" if text_model else "unconditional-image-generation")
    assert data.datasets == ["zalando-datasets/fashion_mnist"]
    assert {"hf_ddm", "diffusers", "fashion-mnist"} <= set(data.tags)
    text = (folder / "README.md").read_text()
    assert "registers" not in text  # hf_ddm registers nothing (README); the old cards said it did
    cls = json.loads((folder / "model_index.json").read_text())["_class_name"][1]
    assert f'from hf_ddm.pipelines import {cls}' in text and f'{cls}.from_pretrained("space/models/{folder.name}")' in text
    index = json.loads((folder / "model_index.json").read_text())
    # saved portable=False: names the installed hf_ddm, and the card says where the portable copy comes from
    assert index["unet"][0] == "hf_ddm.models.unet" and "_hf_ddm_modules" not in index
    assert "python -m hf_ddm.portable" in text


def test_shipped_vae_card():
    data = ModelCard.load(REPO / "space" / "models" / "ldm_class" / "vae" / "README.md").data
    assert data.library_name == "diffusers" and "vae" in data.tags and data.pipeline_tag is None


def _usage_code(card_text: str) -> str:
    usage = card_text.split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny train_ddpm run with everything that writes files on: TensorBoard logs, checkpoints,
    validation, EMA, a fine-tune start from an absolute --pretrained_model_path."""
    root = tmp_path_factory.mktemp("hubrun")
    data = write_idx(root / "data")
    first = root / "first"
    run_script("train_ddpm", ["--data_dir", data, "--resolution", 8, "--channels", 1, "--max_train_steps", 1,
                              "--output_dir", first, *TINY_UNET, *FAST])
    out = root / "ddpm-run"
    fast = [a for a in FAST if a not in ("--report_to", "none")]
    run_script("train_ddpm", ["--data_dir", data, "--resolution", 8, "--channels", 1, "--max_train_steps", 2,
                              "--checkpointing_steps", 1, "--validation_steps", 1, "--use_ema", "--report_to",
                              "tensorboard", "--pretrained_model_path", first / "unet", "--output_dir", out,
                              *TINY_UNET, *fast])
    return root, out


def test_training_output_names_no_machine_path(trained):
    root, out = trained
    assert list((out / "logs").rglob("events.out.tfevents.*")), "TensorBoard wrote no event file"
    assert [p.name for p in out.glob("checkpoint-*")]
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert "_name_or_path" not in unet_config  # loaded from an absolute path, saved without it
    assert machine_paths(out, known=(str(root), str(REPO), os.path.expanduser("~") + "/")) == []


def test_training_card(trained):
    _root, out = trained
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert "training" in card.data.tags and card.data.base_model is None  # a local start is not a Hub base model
    assert "dataset: data (local IDX files, split train)" in card.text
    assert "hub_token" not in card.text


def test_training_output_loads_without_hf_ddm_through_its_card_snippet(trained, tmp_path):
    """The card's own snippet, run where hf_ddm is not installed, from the folder's parent directory."""
    from test_portable import _venv_without_hf_ddm

    _root, out = trained
    code = _usage_code((out / "README.md").read_text())
    assert f'from_pretrained("{out.name}", trust_remote_code=True)' in code and "hf_ddm" not in code.split("#")[0]
    python = _venv_without_hf_ddm(tmp_path / "venv")
    script = tmp_path / "snippet.py"
    script.write_text("import sys, importlib.util\nassert importlib.util.find_spec('hf_ddm') is None\n" + code
                      + "\nassert not [m for m in sys.modules if m.startswith('hf_ddm')]\nprint('ok', images[0].size)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([python, "-I", str(script)], cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ok (8, 8)" in proc.stdout and (out.parent / "sample.png").is_file()


# --- name_or_path -------------------------------------------------------------------------------------

def test_save_drops_local_name_or_path_and_keeps_hub_ids(tmp_path):
    from hf_ddm.pipeline_utils import strip_local_origins

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path / "x"), "a": 1}))
    (tmp_path / "model_index.json").write_text(json.dumps({"_name_or_path": "someone/model", "b": 2}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"name_or_path": "../relative/dir"}))
    changed = strip_local_origins(tmp_path)
    assert json.loads((tmp_path / "unet" / "config.json").read_text()) == {"a": 1}
    assert json.loads((tmp_path / "model_index.json").read_text())["_name_or_path"] == "someone/model"
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {}
    assert len(changed) == 2


# --- the Hub flow -------------------------------------------------------------------------------------

HUB_ARGS = ["--push_to_hub", "--hub_model_id", "me/tiny-ddpm"]


def _ddpm_argv(data, out, *extra):
    return ["--data_dir", data, "--resolution", 8, "--channels", 1, "--output_dir", out, *TINY_UNET, *FAST, *extra]


def test_offline_push_stops_before_training_and_names_the_fix(tmp_path):
    """The issue's command: offline, --push_to_hub used to train to the end and then crash."""
    data = write_idx(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "train" / "train_ddpm.py"),
                           *map(str, _ddpm_argv(data, out, "--max_train_steps", 1000, *HUB_ARGS))],
                          cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--hub_model_id me/tiny-ddpm" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert not out.exists()  # nothing was loaded or written


def _fake_hub(monkeypatch, create=None):
    """HfApi's calls recorded in order (no network); ``create`` replaces create_repo. The Hub counts as online
    whatever the environment says (``HF_HUB_OFFLINE=1`` is a common setting; huggingface_hub reads it once, at
    import), so these tests reach the paths they are about."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    class Repo:
        repo_id = "me/tiny-ddpm"

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        if create is not None:
            return create(repo_id)
        return Repo()

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw.get("path_in_repo"), sorted(os.listdir(kw["folder_path"]))))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_creates_the_repo_first_and_uploads_checkpoints(tmp_path, monkeypatch):
    from hf_ddm.training import run_main
    from test_train_common import load_script, reset_accelerate

    calls = _fake_hub(monkeypatch)
    mod = load_script("train_ddpm")
    orig, seen_at_first_step = mod.DDPMTask.loss, []

    def loss(self, modules, batch, generator):  # what the Hub had seen when the first step began
        if not seen_at_first_step:
            seen_at_first_step.append([c[0] for c in calls])
        return orig(self, modules, batch, generator)

    monkeypatch.setattr(mod.DDPMTask, "loss", loss)
    data, out = write_idx(tmp_path / "data"), tmp_path / "out"
    argv = _ddpm_argv(data, out, "--max_train_steps", 2, "--checkpointing_steps", 1, "--hub_upload_checkpoints",
                      *HUB_ARGS)
    reset_accelerate()
    try:
        assert run_main(mod.main, [str(a) for a in argv]) == 0
    finally:
        reset_accelerate()
    assert seen_at_first_step == [["create_repo"]]
    assert [c[:2] for c in calls] == [("create_repo", "me/tiny-ddpm"), ("upload_folder", "checkpoint-1"),
                                      ("upload_folder", "checkpoint-2"), ("create_repo", "me/tiny-ddpm"),
                                      ("upload_folder", None)]
    assert "model.safetensors" in calls[1][2]
    assert {"model_index.json", "README.md", "pixel_pipeline.py", "unet", "scheduler"} <= set(calls[-1][2])


@pytest.mark.parametrize("error, words", [
    ("unreachable", ["unreachable", "HF_HUB_OFFLINE", "--hub_model_id me/tiny-ddpm"]),
    ("unauthorized", ["HTTP 401", "hf auth login", "--hub_token", "--hub_model_id me/tiny-ddpm"]),
])
def test_hub_errors_stop_at_argument_parsing(tmp_path, monkeypatch, error, words):
    from huggingface_hub.errors import HfHubHTTPError

    from hf_ddm.training import ConfigError
    from test_train_common import load_script

    import huggingface_hub.errors as hub_errors

    # The HTTP backend's own Response class (huggingface_hub picks it), as a refused create_repo returns it.
    response_cls = hub_errors.Response
    request = sys.modules[response_cls.__module__.split(".")[0]].Request("POST", "https://huggingface.co/api/repos/create")

    def create(repo_id):
        if error == "unreachable":
            raise OSError("[Errno -2] Name or service not known")
        raise HfHubHTTPError("401 Client Error: Unauthorized", response=response_cls(401, request=request))

    _fake_hub(monkeypatch, create)
    mod = load_script("train_ddpm")
    with pytest.raises(ConfigError) as info:
        mod.main([str(a) for a in _ddpm_argv(tmp_path / "nodata", tmp_path / "out", *HUB_ARGS)])
    for w in words:
        assert w in str(info.value)


def test_upload_checkpoints_needs_push(capsys):
    from hf_ddm.training import parse_args
    from test_train_common import load_script

    with pytest.raises(SystemExit):
        parse_args(load_script("train_ddpm").build_parser(), ["--hub_upload_checkpoints"])
    assert "--hub_upload_checkpoints needs --push_to_hub" in capsys.readouterr().err


def test_tiny_pipeline_save_defaults_to_portable(tmp_path):
    from hf_ddm.models import UNet
    from hf_ddm.pipelines import PixelDiffusionPipeline
    from hf_ddm.schedulers.vp import VPScheduler

    torch.manual_seed(0)
    unet = UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                attention_levels=(), norm_num_groups=4, attention_head_dim=8)
    PixelDiffusionPipeline(unet, VPScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["unet"] == ["hf_ddm_unet", "UNet"] and (tmp_path / "p" / "unet" / "hf_ddm_unet.py").is_file()


def test_non_portable_folder_without_hf_ddm_says_how_to_install(tmp_path):
    """A portable=False folder needs hf_ddm; where it is missing the error names the real way to get it
    (hf_ddm is not on PyPI), never a `pip install hf_ddm` of our own."""
    from test_portable import _pixel_vp, _venv_without_hf_ddm

    pipe, _kw = _pixel_vp()
    pipe.save_pretrained(tmp_path / "plain", portable=False)
    python = _venv_without_hf_ddm(tmp_path / "venv")
    code = ("from diffusers import DiffusionPipeline\n"
            "try:\n    DiffusionPipeline.from_pretrained('plain', trust_remote_code=True)\n"
            "except ImportError as e:\n    print('ERROR:', e)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([python, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    error = proc.stdout.split("ERROR:", 1)[-1]
    assert "portable=False" in error and "not on PyPI" in error and "pip install -e" in error, proc.stdout + proc.stderr


@pytest.mark.parametrize("name, scale, interval", [("ldm_class", 4.0, [0, 4]), ("ldm_text", 4.0, [0, 3.5]),
                                                    ("guided", 14.0, [0, 10])])
def test_shipped_conditional_folders_default_to_their_recommended_guidance(name, scale, interval):
    folder = REPO / "space" / "models" / name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["default_guidance_scale"] == scale and index["default_guidance_interval"] == interval
    text = (folder / "README.md").read_text()
    assert f"Without `guidance_scale` the pipeline uses {scale:g}" in text
    assert f"It guides only at noise levels σ ≤ {interval[1]:g}" in text
    assert "guidance_scale=" not in _usage_code(text)  # the snippet relies on the default


def test_saved_message_names_the_folder_and_how_to_load_it(tmp_path):
    from hf_ddm.training.hub import saved_message

    pipe, vae, other = tmp_path / "pipe", tmp_path / "vae", tmp_path / "other"
    for d in (pipe, vae, other):
        d.mkdir()
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": ["pixel_pipeline", "PixelDiffusionPipeline"]}))
    (vae / "config.json").write_text(json.dumps({"_class_name": "VAE"}))
    text = saved_message(str(pipe), "me/tiny")
    assert text.startswith(f"saved the pipeline in {pipe}") and "PixelDiffusionPipeline.from_pretrained('me/tiny')" in text
    assert text.endswith("https://huggingface.co/me/tiny")
    assert f"from hf_ddm.models.vae import VAE; VAE.from_pretrained({str(vae)!r})" in saved_message(str(vae))
    assert saved_message(str(other)) == f"saved the run in {other}"
