"""Shared fixtures; helpers live in helpers.py."""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))

