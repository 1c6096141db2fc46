"""Packaging and library manners: one version source, the extras the README names, typed, and a library
that leaves logging configuration to its entry points."""

import ast
import importlib.metadata
import tomllib
from pathlib import Path

import hf_ddm

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_one_version_source():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hf_ddm.__version__"}
    assert importlib.metadata.version("hf-ddm") == hf_ddm.__version__


def test_train_extra_brings_the_default_tracker():
    from hf_ddm.training import add_training_args
    import argparse

    p = argparse.ArgumentParser()
    add_training_args(p)
    assert p.parse_args([]).report_to == "tensorboard"
    train = PYPROJECT["project"]["optional-dependencies"]["train"]
    assert any(r.split("[")[0].split(">")[0].split("=")[0].strip() == "tensorboard" for r in train)
    extras = importlib.metadata.distribution("hf-ddm").metadata.get_all("Provides-Extra")
    assert {"train", "space", "test"} <= set(extras)
    assert 'pip install -e ".[train]"' in (REPO / "README.md").read_text()


def test_typed_and_classified():
    assert (REPO / "hf_ddm" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["hf_ddm"]
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def _calls_basic_config(path: Path) -> list:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "basicConfig"]


def test_library_configures_no_logging_and_scripts_do():
    library = [p for d in ("hf_ddm", "pipelines") for p in (REPO / d).rglob("*.py")]
    assert {str(p.relative_to(REPO)): _calls_basic_config(p) for p in library if _calls_basic_config(p)} == {}
    for script in ("train_ddpm", "train_ldm", "train_vae", "train_classifier"):
        tree = ast.parse((REPO / "train" / f"{script}.py").read_text())
        main_block = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert main_block and "logging.basicConfig" in ast.unparse(main_block[0]), script


def test_no_message_suggests_a_pypi_name_that_does_not_exist():
    """hf_ddm is not on PyPI; `pip install hf_ddm` (or hf-ddm) would find nothing."""
    from hf_ddm.pipeline_utils import INSTALL_HINT

    assert "not on PyPI" in INSTALL_HINT and "pip install -e" in INSTALL_HINT
    files = [p for d in ("hf_ddm", "pipelines", "train", "space") for p in (REPO / d).rglob("*") if p.suffix in
             (".py", ".md")] + [REPO / "README.md"]
    bad = [str(p.relative_to(REPO)) for p in files
           if any(s in p.read_text() for s in ("pip install hf_ddm", "pip install hf-ddm"))]
    assert bad == []


def test_nothing_saved_or_shown_carries_a_path_of_the_machine_that_made_it():
    """Results, model cards and configs in the checkout (benchmarks/results, space/): no home, temp or work
    folder of whoever ran the command (a benchmark that let a training script's log line through did)."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files", "benchmarks/results", "space"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    machine = re.compile(r"(?<![\w.])/(root|tmp|home|work|Users|private/var)/")
    leaks = []
    for name in files:
        if name.endswith((".md", ".json", ".txt", ".py", ".yaml", ".yml", ".csv")):
            text = (REPO / name).read_text(errors="replace")
            leaks += [f"{name}: {m.group(0)}" for m in machine.finditer(text)]
    assert len(files) > 50 and not leaks, leaks[:10]
