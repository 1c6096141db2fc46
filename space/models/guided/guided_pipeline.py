"""Saved by hf_ddm with portable=False: the installed hf_ddm's ClassifierGuidedPipeline."""
import importlib.util
if importlib.util.find_spec("hf_ddm") is None:
    raise ImportError('This folder was saved with save_pretrained(portable=False) and needs the hf_ddm package. hf_ddm is not on PyPI: install it from a clone of its repository, `pip install -e <clone>` (distribution name `hf-ddm`); or load a portable copy (python -m hf_ddm.portable FOLDER DEST, where hf_ddm is installed).')
from hf_ddm.pipelines.guided_pipeline import ClassifierGuidedPipeline  # noqa: E402,F401
