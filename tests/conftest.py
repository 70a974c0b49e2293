import os

# torch's testing utilities load PyTorch's own hypothesis profile when CI is set; import them
# first, then load ours so that ours wins.
from torch.testing._internal import common_utils  # noqa: F401
from hypothesis import HealthCheck, settings

settings.register_profile("genie-ci", derandomize=True, deadline=None, max_examples=60, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("genie-dev", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("genie-ci" if os.environ.get("CI") else "genie-dev")

import pytest  # noqa: E402
import torch  # noqa: E402

import genie  # noqa: E402, F401

DEVICE = "remote_accelerator"


@pytest.fixture
def dev():
    return torch.device(DEVICE, 0)


def host(t):
    """Materialize and check the type is exactly torch.Tensor (isinstance is always true)."""
    out = t.cpu()
    assert type(out) is torch.Tensor
    return out
