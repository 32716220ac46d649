"""Shared fixtures; helpers live in helpers.py."""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; only test_properties.py needs it
    pass
else:
    # HYPOTHESIS_PROFILE=emulated: a few examples per property, for runs under
    # qemu (.ci/aarch64), where every example is many times slower.  test_properties.py
    # registers "ci" (the default) and "long", and loads whichever is named.
    settings.register_profile("emulated", max_examples=8, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))



# The tests of tests/test_threads.py that need n_threads > 1 to run more than one
# thread.  On a deliberately serial build (SPARSEPROP_EXPECT_OPENMP=0, see
# tests/test_build.py and .ci/compilers) they must fail: strict xfail, so one
# that passes there is reported as an error rather than silently accepted.
_NEED_A_TEAM = ("test_linear_thread_counts", "test_conv2d_thread_counts",
                "test_weight_gradients_do_depend_on_the_thread_count")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SPARSEPROP_EXPECT_OPENMP", "1") != "0":
        return
    mark = pytest.mark.xfail(strict=True, reason="a build without OpenMP runs one thread")
    for item in items:
        if item.path.name == "test_threads.py" and item.originalname in _NEED_A_TEAM:
            item.add_marker(mark)
