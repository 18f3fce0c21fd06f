"""Hypothesis profiles: ``ci`` (the default) and ``long`` (a one-off run:
``python -m pytest tests/test_fuzz.py --hypothesis-profile=long``, 1000 examples per test or
``FASTLAYERS_LONG_EXAMPLES``).

``ci`` keeps Hypothesis' 100 examples for the tests that do not choose; the fuzz suite
(tests/test_fuzz.py, about 40 tests) takes 25 each under it, and the long profile's count under
``long``."""
import os

import pytest
from hypothesis import HealthCheck, settings

import fastlayers as fl

# No deadline: the machine is shared and the first call of a kernel may compile (Numba); a hang
# still shows as a test that never ends, and the examples are small enough to take milliseconds.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
settings.register_profile("ci", **_common)
settings.register_profile("long", max_examples=int(os.environ.get("FASTLAYERS_LONG_EXAMPLES", "1000")), **_common)
settings.load_profile("ci")


@pytest.fixture
def split_work(monkeypatch):
    """Run even tiny calls on every thread asked for (``fastlayers._dispatch.GRAIN_SIZE`` keeps
    them on one), so the kernels' multi-thread paths run on test-sized inputs."""
    monkeypatch.setattr(fl._dispatch, "GRAIN_SIZE", 1)


@pytest.fixture(autouse=True)
def fresh_dispatch():
    """Every test's first call of each signature goes through the dispatch in full: the
    functional API's kept plans (ops._spec.replays) would otherwise skip the spies and
    monkeypatched rules a test installs after an earlier test made the same call."""
    from fastlayers.ops._spec import forget_replays

    forget_replays()
