"""crossent's native CPU operators (``_native.cpp``): built once per machine, off the critical path.

At a batch of 32 rows a loss written as torch operations costs more in per-operation overhead
(about a microsecond each, and one autograd node each) than in arithmetic. The small-input
formulations of :mod:`crossent.losses._small` whose chain of operations is long -- BCE with
logits, exact at every logit -- also exist as one vectorised C++ loop with a C++ autograd node:
one dispatcher call forward and one node backward, like torch's own loss kernels.

They are compiled with this machine's vector instructions (AVX2 or AVX-512, as torch's own CPU
kernels choose) the first time a call could use them: in the background thread that compiles
crossent's other kernels (:func:`crossent.kernels.wait_for_compiles` waits for it too), while
the torch formulation serves the calls, so no call waits for a compiler. The library is cached
under ``$CROSSENT_CACHE_DIR`` (default ``~/.cache/crossent``), keyed by the source, the torch
version and the instruction set, so a later process loads it in milliseconds.

Where it cannot be built -- no C++ compiler, a platform other than Linux on x86-64, a CPU
without AVX2 -- the torch formulation serves every call. A compiler that fails says so once
(a warning) and is remembered in the cache (a ``.failed`` file beside where the library would
be): later processes do not try that compiler on that source again (delete the file to).
``CROSSENT_NATIVE=0`` turns the native operators off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["ENV_VAR", "Operators", "build", "disabled", "operators", "status"]

ENV_VAR = "CROSSENT_NATIVE"
CACHE_ENV_VAR = "CROSSENT_CACHE_DIR"
_SOURCE = Path(__file__).with_name("_native.cpp")

# The flags of the instruction sets torch's CPU kernels are built for (its dispatch names).
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_lock = threading.Lock()
_state = "new"  # "building", "ready", "failed" or "off"
_error: str | None = None
_off = 0  # inside disabled()


class Operators:
    """The loaded operators, by name: each the C++ callable of its ``torch.ops.crossent_native``
    overload (the overload's ``__call__`` is one more Python frame on every call).

    Each raises ``NotImplementedError`` for a reduced loss that is not finite, ``IndexError``
    for a class index out of range and ``ValueError`` for a probability outside [0, 1]: the
    caller then hands the call to the general path, whose answers and errors those are."""

    __slots__ = ("bce_with_logits", "binary_cross_entropy", "cross_entropy", "cross_entropy_probs")

    def __init__(self, namespace: Any) -> None:
        for name in self.__slots__:
            overload = getattr(namespace, name).default
            setattr(self, name, getattr(overload, "_op", overload))


#: The operators, once loaded (``None`` until then): what every call reads.
_OPERATORS: Operators | None = None


def _environment_allows() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _capability() -> str | None:
    """The instruction set to build for, or ``None`` where this machine is not one the native
    operators are built on."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in (
        "x86_64",
        "amd64",
    ):
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _CAPABILITY_FLAGS else None


def operators() -> Operators | None:
    """The native operators once they are loaded, else ``None`` (and, the first time, their
    build starts in the background)."""
    ops = _OPERATORS
    if ops is not None and not _off:
        return ops
    if _state == "new" and not _off:
        _start()
    return None


def _start() -> None:
    global _state
    with _lock:
        if _state != "new":
            return
        if not _environment_allows() or _capability() is None:
            _state = "off"
            return
        _state = "building"
    from crossent.kernels._dispatch import run_in_background

    run_in_background(_build_and_load)


def build(wait: bool = True) -> bool:
    """Build (or load the cached build of) the native operators now; with ``wait`` block
    until they are ready. Returns whether they are loaded."""
    _start()
    if wait and _state == "building":
        from crossent.kernels._dispatch import wait_for_compiles

        wait_for_compiles()
    return _state == "ready"


def status() -> tuple[str, str | None]:
    """``(state, detail)``: ``"ready"``, ``"building"``, ``"new"`` (no call has needed them
    yet), ``"off"`` (``CROSSENT_NATIVE=0``, or a machine they are not built on) or
    ``"failed"`` (the compiler's error in ``detail``)."""
    if _state == "off":
        if not _environment_allows():
            return "off", f"{ENV_VAR}=0"
        return "off", "built on Linux x86-64 with AVX2 or AVX-512 only"
    return _state, _error


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context the torch formulations serve every call (tests compare the two)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "crossent"


def _build_and_load() -> None:
    global _state, _error, _OPERATORS
    try:
        path = _library()
        torch.ops.load_library(str(path))
        _OPERATORS = Operators(torch.ops.crossent_native)
        _state = "ready"
    except Exception as exc:  # no compiler, a failed build, a library that will not load
        _error = f"{type(exc).__name__}: {exc}"
        _state = "failed"
        if not isinstance(exc, (_NoCompiler, _FailedBefore)):
            warnings.warn(
                f"crossent: its native CPU kernels could not be built ({_error}); small "
                f"inputs are computed with torch operations instead (slower, as exact). "
                f"Set {ENV_VAR}=0 to skip the build.",
                RuntimeWarning,
                stacklevel=2,
            )


class _NoCompiler(RuntimeError):
    pass


class _FailedBefore(RuntimeError):
    """This compiler failed to build this source before (a marker in the cache): not tried
    again, nor reported again, in every new process."""


def _library() -> Path:
    """The built library: from the cache, or compiled into it (written under a temporary
    name and renamed, so processes building at once never load a half-written file)."""
    from torch.utils import cpp_extension

    capability = _capability()
    assert capability is not None
    source = _SOURCE.read_bytes()
    flags = [
        "-O3",
        "-DNDEBUG",
        "-std=c++20",
        "-fPIC",
        "-shared",
        f"-DCPU_CAPABILITY={capability}",
        f"-DCPU_CAPABILITY_{capability}",
        *_CAPABILITY_FLAGS[capability],
    ]
    key = hashlib.sha256(
        b"\0".join([source, torch.__version__.encode(), " ".join(flags).encode()])
    ).hexdigest()[:20]
    directory = _cache_dir() / "native"
    path = directory / f"crossent_native_{key}.so"
    if path.exists():
        return path
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise _NoCompiler("no C++ compiler found (c++, g++ or $CXX)")
    failed = path.with_suffix(".failed")  # first line: the compiler; then its error
    with contextlib.suppress(OSError):
        before = failed.read_text().split("\n", 1)
        if before[0] == compiler:
            raise _FailedBefore(before[1] if len(before) > 1 else "")
    directory.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libraries = [f"-L{p}" for p in cpp_extension.library_paths()]
    fd, partial = tempfile.mkstemp(prefix=path.stem, suffix=".partial", dir=directory)
    os.close(fd)
    try:
        command = [
            compiler,
            *flags,
            *includes,
            str(_SOURCE),
            "-o",
            partial,
            *libraries,
            "-lc10",
            "-ltorch_cpu",
            "-ltorch",
        ]
        compiling = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own: _stop ends its children too
        )
        # a process that exits while the compiler runs stops it (the build runs in a daemon
        # thread, which the interpreter does not wait for): no compiler left running, no
        # partial file left in the cache
        stop = functools.partial(_stop, compiling, partial)
        atexit.register(stop)
        try:
            _, errors = compiling.communicate()
        finally:
            atexit.unregister(stop)
        if compiling.returncode != 0:
            error = f"{compiler} exited with {compiling.returncode}: {errors[-2000:]}"
            with contextlib.suppress(OSError):
                failed.write_text(f"{compiler}\n{error}")
            raise RuntimeError(error)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return path


def _stop(compiling: subprocess.Popen, partial: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(compiling.pid, signal.SIGKILL)  # the driver and the compiler it started
    with contextlib.suppress(Exception):
        compiling.wait(timeout=5)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
