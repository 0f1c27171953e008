"""pin_host_memory: page-locked with the CUDA runtime, or a clear error."""

from __future__ import annotations

import pytest
from conftest import example, ids_of, sample_of

import echo_go
from echo_go import _cuda


def _cuda_runtime():
    try:
        return _cuda.load_runtime()
    except RuntimeError:
        return None


def test_without_cuda_the_error_names_every_place_probed():
    if _cuda_runtime() is not None:
        pytest.skip("a CUDA runtime is present")
    with pytest.raises(RuntimeError) as caught:
        echo_go.Server(example(), batch_size=2, pin_host_memory=True)
    message = str(caught.value)
    for probed in (
        "/proc/self/maps",
        "nvidia-cuda-runtime",
        "find_library",
        "CUDA_HOME",
        "/usr/local/cuda/lib64",
        "libcudart.so.12",
    ):
        assert probed in message, probed


def test_with_cuda_the_ring_is_page_locked():
    runtime = _cuda_runtime()
    if runtime is None:
        pytest.skip("no CUDA runtime")
    import ctypes

    with echo_go.Server(example(), batch_size=2, pin_host_memory=True) as server:
        server.submit(sample_of(0))
        server.submit(sample_of(1))
        batch = server.sample().batch
        assert ids_of(batch) == [0, 1]
        flags = ctypes.c_uint(0)
        address = ctypes.c_void_p(batch["obs"].ctypes.data)
        assert runtime.cudaHostGetFlags(ctypes.byref(flags), address) == 0  # registered memory
        del batch
