"""hf_ddm.catalogue: the discrete schedule it builds every sampler on."""

import pytest

from hf_ddm.schedulers.vp import VPScheduler


def test_schedule_config_refuses_a_continuous_sde():
    """A continuous SDE has no discrete schedule: refused, not turned into a linear-beta VP."""
    from hf_ddm.catalogue import schedule_config
    from hf_ddm.schedulers.sde import SDEScheduler

    with pytest.raises(ValueError, match="continuous 'subvp'"):
        schedule_config(SDEScheduler(sde="subvp").config)
    discrete = schedule_config(SDEScheduler.from_config(VPScheduler(beta_schedule="squaredcos_cap_v2").config).config)
    assert discrete["beta_schedule"] == "squaredcos_cap_v2"


FAMILY_SCHEDULERS = {
    "vp": lambda: VPScheduler(),
    "vp (a diffusers schedule in SDEScheduler)": lambda: _sde().from_config(VPScheduler().config),
    "sde:vp": lambda: _sde()(sde="vp"),
    "sde:subvp": lambda: _sde()(sde="subvp"),
    "sde:ve": lambda: _sde()(sde="ve"),
    "ve": lambda: _ve()(),
}


def _sde():
    from hf_ddm.schedulers.sde import SDEScheduler

    return SDEScheduler


def _ve():
    from hf_ddm.schedulers.ve import VEScheduler

    return VEScheduler


@pytest.mark.parametrize("family", list(FAMILY_SCHEDULERS))
def test_every_entry_builds_and_counts_the_model_calls_it_makes(family):
    from hf_ddm.catalogue import catalogue

    for label, entry in catalogue(FAMILY_SCHEDULERS[family]()).items():
        sched = entry.make()
        assert entry.nfe_per_step == getattr(sched, "order", 1), label


def test_the_catalogue_is_one_table_and_offers_every_registered_solver():
    """Each label is one entry of SAMPLERS (one name); every SDEScheduler variant of the registry is offered."""
    from hf_ddm.catalogue import SAMPLERS, catalogue
    from hf_ddm.solver_registry import SOLVERS

    offered = set()
    for make in FAMILY_SCHEDULERS.values():
        offered |= set(catalogue(make()))
    labelled = [spec.label for spec in SAMPLERS.values() if spec.label]
    assert len(labelled) == len(set(labelled))
    assert offered - {"as saved (the model's own scheduler)"} == set(labelled)
    for solver in SOLVERS.values():
        for variant in solver.variants:
            spec = SAMPLERS[variant.name]
            assert spec.label == variant.label
            model = FAMILY_SCHEDULERS["ve" if spec.cls == "VEScheduler" else "vp"]()
            assert spec.make(model.config).solver is solver, variant.name


SHIPPED = sorted(p for p in (__import__("pathlib").Path(__file__).resolve().parents[1] / "space" / "models").glob("*/scheduler"))


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.parent.name)
def test_as_saved_names_its_solver_and_grid(folder):
    from hf_ddm.catalogue import GRID_WORDS, describe_saved
    from hf_ddm.schedulers.sde import SDEScheduler
    from hf_ddm.solver_registry import SOLVERS

    scheduler = SDEScheduler.from_pretrained(folder)
    text = describe_saved(scheduler)
    assert GRID_WORDS[scheduler.config.time_grid] in text, text
    labels = [v.label for v in SOLVERS[scheduler.config.solver].variants if v.label]
    assert any(label.split(" (")[0].split(", ")[0] in text for label in labels), (text, labels)


def test_as_saved_of_a_config_no_entry_matches_falls_back_to_class_and_spacing():
    from diffusers import DDIMScheduler

    from hf_ddm.catalogue import describe_saved

    assert describe_saved(DDIMScheduler(timestep_spacing="trailing")) == "DDIMScheduler, trailing spacing"


@pytest.mark.parametrize("sde", ["vp", "subvp"])
def test_optimized_steps_stay_with_the_saved_sampler(sde):
    """Steps optimized for a folder's saved solver run as saved; every other sampler of the menu keeps its own
    grid (a label "uniform in t" must not quietly run the optimized steps)."""
    from hf_ddm.catalogue import AS_SAVED, catalogue
    from hf_ddm.schedulers.sde import SDEScheduler

    kw = dict(beta_schedule="linear") if sde == "vp" else dict(sde="subvp")
    saved = SDEScheduler(solver="multistep", optimized_timesteps={5: [999, 700, 400, 150, 30] if sde == "vp"
                                                                  else [1000, 700, 400, 150, 30]}, **kw)
    menu = catalogue(saved)
    made = {label: sampler.make() for label, sampler in menu.items()}
    assert made[AS_SAVED].config.optimized_timesteps
    others = [label for label, s in made.items() if label != AS_SAVED and isinstance(s, SDEScheduler)]
    assert others and not any(made[label].config.get("optimized_timesteps") for label in others)

