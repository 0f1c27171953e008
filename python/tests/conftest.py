"""Shared pieces of the echo_go tests.

The tests run the echo-server binary that the installed package carries
(or the one ECHO_GO_SERVER names); without one they fail rather than skip.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from echo_go import _engine


@pytest.fixture(scope="session", autouse=True)
def echo_server_binary() -> str:
    try:
        return _engine.server_binary()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def example() -> dict:
    """W1's sample: flattens to done, obs, reward."""
    return {
        "obs": np.zeros(8, np.float32),
        "reward": np.zeros((), np.float32),
        "done": np.zeros((), np.uint8),
    }


def sample_of(i: int) -> dict:
    """A sample whose every leaf says i."""
    return {
        "obs": np.full(8, i, np.float32),
        "reward": np.array(i * 0.5, np.float32),
        "done": np.array(i % 2, np.uint8),
    }


def ids_of(batch: dict) -> list[int]:
    return [int(v) for v in batch["obs"][:, 0]]


def wait_for(predicate, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def process_alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def child_env() -> dict[str, str]:
    """The environment for a child Python: this one's, with echo_go importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
