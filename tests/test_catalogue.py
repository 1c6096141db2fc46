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
