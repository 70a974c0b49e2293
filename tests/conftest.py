import os

from hypothesis import HealthCheck, settings

# torch's testing utilities load PyTorch's own hypothesis profile when CI is set; import them
# first, then load ours so that ours wins.
from torch.testing._internal import common_utils  # noqa: F401

settings.register_profile("genie-ci", derandomize=True, deadline=None, max_examples=60, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("genie-dev", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("genie-ci" if os.environ.get("CI") else "genie-dev")

import pytest  # noqa: E402
import torch  # noqa: E402

import genie  # noqa: E402, F401

DEVICE = "remote_accelerator"
# GENIE_TEST_SERVER=1: the whole suite runs with a genie server (a subprocess) as the execution
# target; tests marked ``in_process`` inspect the in-process executor and skip there.
REMOTE = os.environ.get("GENIE_TEST_SERVER") == "1"


@pytest.fixture(scope="session", autouse=True)
def _execution_target():
    if not REMOTE:
        yield None
        return
    with genie.start_server() as srv, genie.remote(srv):
        yield srv


def pytest_collection_modifyitems(config, items):
    if REMOTE:
        skip = pytest.mark.skip(reason="inspects the in-process executor; this run executes on a genie server")
        for item in items:
            if item.get_closest_marker("in_process"):
                item.add_marker(skip)


@pytest.fixture
def dev():
    return torch.device(DEVICE, 0)


def host(t):
    """Materialize and check the type is exactly torch.Tensor (isinstance is always true)."""
    out = t.cpu()
    assert type(out) is torch.Tensor
    return out


if os.environ.get("GENIE_CHECK_TEMPLATES") == "1":
    @pytest.fixture(autouse=True)
    def _remote_template_agrees_with_the_encoder(monkeypatch):
        """Every fingerprinted plan of the test: the remote client's template reads it as the local
        encoder wrote it (slots, external arguments, specs): the two walks of one format agree."""
        from genie.execution import plan as plans
        from genie.execution import scheduler
        from genie.execution.remote.client import Template
        problems = []

        class Checked(plans.Plan):
            __slots__ = ()

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if self.key is not None:
                    problems.extend(Template(self).disagreements(self))

        monkeypatch.setattr(scheduler, "Plan", Checked)
        yield
        assert not problems, problems[:5]
