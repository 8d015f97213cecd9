"""Shared fixtures."""
import threading

import pytest

import numpyconv


@pytest.fixture
def set_budget():
    """``set_budget(nbytes)`` sets the column budget for the rest of the test; the value it had
    before the test is restored afterwards."""
    previous = numpyconv.column_budget()
    yield numpyconv.set_column_budget
    numpyconv.set_column_budget(previous)


@pytest.fixture
def concurrently():
    """``concurrently(run, cases, repeats)``: ``run(case)`` for each case on its own thread,
    ``repeats`` times (interleaved with the other threads); returns the last results in order."""
    def call(run, cases, repeats):
        results = [None] * len(cases)

        def worker(k):
            for _ in range(repeats):
                results[k] = run(cases[k])
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    return call
