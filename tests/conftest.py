"""Suite-wide fixtures: a fixed seed for every test, hypothesis profiles, and ``backend``.

``backend`` runs a test once per way of computing a loss -- ``"reference"``, ``"fused"``,
``"compiled"`` (marked ``slow``: each new loss configuration costs a compile of seconds, so
only a test marked ``compiled_subset(param=[values], ...)`` runs it, for those values) and
``"triton"`` (marked ``triton``) -- inside :func:`crossent.kernels.no_fallback`, so a backend
that cannot run fails the test instead of handing the call to another. ``family_backend`` does
the same for calls that name no backend (test_binary.py and test_softmax.py use it for every
test). Without a GPU the Triton kernels run under ``TRITON_INTERPRET=1``, which must be set
before triton is imported: the main process deselects the ``triton`` cases, and
``tests/test_backends.py::test_every_backend_case_under_the_triton_interpreter`` runs them in a
subprocess with the variable set.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from crossent.kernels import no_fallback

# The backend fixtures only set which backend a call uses: they are safe to share between
# a property test's examples.
_SHARED = [HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=_SHARED
)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _native_operators():
    """crossent's native CPU operators are built (or loaded from the cache) before the first
    test, where this machine builds them: which formulation serves a small call then does not
    depend on the order the tests run in (test_native.py compares the two)."""
    from crossent.kernels import _native

    _native.build(wait=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # backend="auto" compiles new configurations in a background thread: let a test's
    # compiles finish inside that test (not during the next one, whose graph counts or
    # timings they would change)
    from crossent.kernels import wait_for_compiles

    wait_for_compiles()


BACKENDS = ("reference", "fused", "compiled", "triton")
_BACKEND_PARAMS = ("backend", "family_backend")


def triton_runs_here() -> bool:
    """Whether this process can run the Triton kernels: a GPU, or the interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def _backend_param(name: str):
    marks = {"compiled": [pytest.mark.slow], "triton": [pytest.mark.triton]}.get(name, [])
    return pytest.param(name, id=name, marks=marks)


def _enter_backend(request) -> str:
    name = request.param
    if name == "triton":
        pytest.importorskip("triton")
    elif os.environ.get("CROSSENT_TEST_ONLY_TRITON") == "1":
        pytest.skip("this run covers the triton backend only")
    return name


@pytest.fixture(params=[_backend_param(name) for name in BACKENDS])
def backend(request):
    """The backend a test passes to every loss call (see the module docstring)."""
    name = _enter_backend(request)
    with no_fallback():
        yield name


@pytest.fixture(params=[_backend_param(name) for name in BACKENDS])
def family_backend(request, monkeypatch):
    """Every loss call of the test that names no backend runs on this one (through the
    ``CROSSENT_BACKEND`` environment variable): the family suites use it for every test."""
    name = _enter_backend(request)
    monkeypatch.setenv("CROSSENT_BACKEND", name)
    with no_fallback():
        yield name


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compiled_subset(**params): run the compiled backend where every named parameter "
        "takes one of the listed values (a representative subset: each compile costs "
        "seconds); without the marker a test does not run on the compiled backend",
    )
    config.addinivalue_line(
        "markers", "no_triton_interpreter: the test needs what Triton's interpreter lacks"
    )
    config.addinivalue_line(
        "markers",
        "triton_subset(**params): run the triton backend only where every named parameter "
        "takes one of the listed values (the interpreter runs a case in tenths of a second)",
    )
    config.addinivalue_line(
        "markers",
        "backends(*names): the only backends the test runs on (e.g. a gradient "
        "for the targets, which only the reference path computes)",
    )


def _bfloat16(params: dict) -> bool:
    return any(v is torch.bfloat16 for v in params.values())


def pytest_collection_modifyitems(config, items):
    """Deselect backend cases that do not run in this process: compiled cases outside a
    ``compiled_subset``, and triton cases where Triton cannot run (they run in the
    interpreter subprocess of test_backends.py) or its interpreter lacks what they need."""
    interpreter = not torch.cuda.is_available()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = next((params[n] for n in _BACKEND_PARAMS if n in params), None)
        only = item.get_closest_marker("backends")
        wanted = backend is None or only is None or backend in only.args
        if not wanted:
            pass
        elif backend == "compiled":
            marker = item.get_closest_marker("compiled_subset")
            wanted = marker is not None and all(
                params.get(name) in values for name, values in marker.kwargs.items()
            )
        elif backend == "triton":
            marker = item.get_closest_marker("triton_subset")
            wanted = (
                triton_runs_here()
                and not (
                    interpreter
                    and (_bfloat16(params) or item.get_closest_marker("no_triton_interpreter"))
                )
                and (
                    marker is None
                    or all(params.get(name) in values for name, values in marker.kwargs.items())
                )
            )
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
