"""Shared fixtures."""
import pytest

import numpyconv


@pytest.fixture
def set_budget():
    """``set_budget(nbytes)`` sets the column budget for the rest of the test; the value it had
    before the test is restored afterwards."""
    previous = numpyconv.column_budget()
    yield numpyconv.set_column_budget
    numpyconv.set_column_budget(previous)
