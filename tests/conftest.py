"""Fixtures shared by test modules of several packages (helpers that are plain functions live in tests/support/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a shared 2-core machine thread sync dominates.

    Modules of tiny-model tests use it for every test: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
