"""Fixtures shared by the core's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _toy_backend import ToyBackend

from peftkit import _plugins


@pytest.fixture
def toy_backend() -> Iterator[ToyBackend]:
    """The toy quantized backend, answering view requests in the process-wide plugin manager for one test."""
    _plugins.reset()
    plugin = ToyBackend()
    _plugins.plugin_manager().register(plugin, name="toy")
    yield plugin
    _plugins.reset()
