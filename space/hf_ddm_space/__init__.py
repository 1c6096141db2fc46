"""The hf_ddm Gradio Space: model registry, sampler catalogue and UI (``space/app.py`` runs it)."""

from .registry import SPECS, Registry, load_pipeline
from .samplers import AS_SAVED, catalogue
from .ui import ANIMATIONS, CYCLE, Limits, SpaceApp, build_demo

__all__ = ["SPECS", "Registry", "load_pipeline", "AS_SAVED", "catalogue", "ANIMATIONS", "CYCLE", "Limits",
           "SpaceApp", "build_demo"]
