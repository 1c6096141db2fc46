"""The Space reads the library's sampler catalogue (``hf_ddm.catalogue``); nothing is defined here."""

from hf_ddm.catalogue import AS_SAVED, UNIFORM_2M, Sampler, catalogue, describe_saved, labels, process_family, solver_of

__all__ = ["AS_SAVED", "UNIFORM_2M", "Sampler", "catalogue", "describe_saved", "labels", "process_family", "solver_of"]
