"""Page-locking the ring's mapping with the CUDA runtime, found at run time.

Nothing here links against CUDA: ``register`` looks for ``libcudart`` the
way a process that already uses CUDA would have it (already loaded, the
``nvidia-cuda-runtime`` wheel, the system's toolkit) and calls
``cudaHostRegister`` through ctypes. When it finds none, it says where it
looked; it never falls back to doing nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading

# cudaHostRegister flags (cuda_runtime_api.h).
_REGISTER_PORTABLE = 0x01
_REGISTER_READ_ONLY = 0x08  # CUDA 11.1+: the pages are mapped PROT_READ here

_SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")

_lock = threading.Lock()
_runtime: ctypes.CDLL | None = None  # written once under _lock


class HostRegistration:
    """A range of host memory page-locked with cudaHostRegister."""

    def __init__(self, runtime: ctypes.CDLL, address: int, nbytes: int):
        self._runtime = runtime
        self._address = address
        self.nbytes = nbytes

    def unregister(self) -> None:
        """Undo the registration. Idempotent."""
        if self._address:
            self._runtime.cudaHostUnregister(ctypes.c_void_p(self._address))
            self._address = 0


def register(address: int, nbytes: int) -> HostRegistration:
    """Page-lock ``nbytes`` at ``address`` for CUDA.

    Raises:
        RuntimeError: no CUDA runtime could be loaded (the message lists
            every place probed), or cudaHostRegister failed.
    """
    runtime = load_runtime()
    err = runtime.cudaHostRegister(
        ctypes.c_void_p(address),
        ctypes.c_size_t(nbytes),
        ctypes.c_uint(_REGISTER_PORTABLE | _REGISTER_READ_ONLY),
    )
    if err != 0:
        runtime.cudaGetLastError()  # reset the runtime's last-error state
        raise RuntimeError(
            f"cudaHostRegister of the ring ({nbytes} bytes at {address:#x}) failed: "
            f"{_error_string(runtime, err)} (cudaError {err})"
        )
    return HostRegistration(runtime, address, nbytes)


def load_runtime() -> ctypes.CDLL:
    """Load libcudart once per process.

    Raises:
        RuntimeError: none of the candidates loaded; the message names each.
    """
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _probe()
        return _runtime


def _probe() -> ctypes.CDLL:
    tried: list[str] = []
    for how, candidates in _candidates():
        if not candidates:
            tried.append(f"  - {how}: nothing found")
        for path in candidates:
            try:
                runtime = ctypes.CDLL(path)
                runtime.cudaHostRegister.restype = ctypes.c_int
            except (OSError, AttributeError) as e:
                tried.append(f"  - {path} [{how}]: {e}")
                continue
            runtime.cudaHostUnregister.restype = ctypes.c_int
            runtime.cudaGetLastError.restype = ctypes.c_int
            runtime.cudaGetErrorString.restype = ctypes.c_char_p
            return runtime
    raise RuntimeError(
        "pin_host_memory=True, but no CUDA runtime (libcudart) could be loaded. Probed, in order:\n"
        + "\n".join(tried)
        + "\nInstall a CUDA runtime (for example pip install nvidia-cuda-runtime-cu12), "
        "or set CUDA_HOME to a CUDA toolkit."
    )


def _candidates() -> list[tuple[str, list[str]]]:
    """Where libcudart may be, most specific first: (how, [paths or sonames])."""
    found = [
        ("already loaded in this process (/proc/self/maps)", _loaded()),
        ("nvidia-cuda-runtime wheel on sys.path", _wheel_libraries()),
    ]
    name = ctypes.util.find_library("cudart")
    found.append(("ctypes.util.find_library('cudart')", [name] if name else []))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            found.append((f"${var}={root}", _libraries_in(os.path.join(root, "lib64"), os.path.join(root, "lib"))))
        else:
            found.append((f"${var}", []))
    for root in ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"):
        found.append((root, _libraries_in(root)))
    found.append(("the loader's search path (LD_LIBRARY_PATH, ld.so.cache)", list(_SONAMES)))
    return found


def _loaded() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        return []
    return sorted(paths)


def _wheel_libraries() -> list[str]:
    dirs = []
    for entry in sys.path:
        nvidia = os.path.join(entry or ".", "nvidia")
        # cuda_runtime/lib in the CUDA 12 wheels, cu13/lib in the CUDA 13 ones.
        dirs += [os.path.join(nvidia, "cuda_runtime", "lib"), os.path.join(nvidia, "cu13", "lib")]
    return _libraries_in(*dirs)


def _libraries_in(*dirs: str) -> list[str]:
    paths: list[str] = []
    for d in dirs:
        paths += sorted(glob.glob(os.path.join(d, "libcudart.so*")), reverse=True)
    return paths


def _error_string(runtime: ctypes.CDLL, err: int) -> str:
    text = runtime.cudaGetErrorString(ctypes.c_int(err))
    return text.decode("utf-8", errors="replace") if text else "unknown error"
