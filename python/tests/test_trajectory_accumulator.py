"""TrajectoryAccumulator behaves as echo's."""

from __future__ import annotations

import numpy as np
import pytest

import echo_go


def _example():
    return {
        "steps": {"obs": np.zeros((3, 2), np.float32), "action": np.zeros((3,), np.int32)},
        "bootstrap": {"obs": np.zeros((1, 2), np.float32)},
        "episode": {"ret": np.zeros((), np.float32), "len": np.zeros(4, np.int32)},
    }


def test_buffered_and_single_item_timescales():
    acc = echo_go.TrajectoryAccumulator(_example())
    for t in range(3):
        acc.add("steps", {"obs": np.full((1, 2), t, np.float32), "action": np.array([t], np.int32)})
    acc.add("bootstrap", {"obs": np.full((1, 2), 9, np.float32)})
    acc.add("episode", {"ret": np.float32(2.5), "len": np.arange(4, dtype=np.int32)})
    tree = acc.build()
    assert tree["steps"]["obs"][:, 0].tolist() == [0, 1, 2]
    assert tree["steps"]["action"].tolist() == [0, 1, 2]
    assert tree["bootstrap"]["obs"].tolist() == [[9, 9]]
    assert float(tree["episode"]["ret"]) == 2.5 and tree["episode"]["len"].tolist() == [0, 1, 2, 3]
    # build() reset the slots: the same buffers fill again.
    acc.add("steps", {"obs": np.full((1, 2), 7, np.float32), "action": np.array([7], np.int32)})
    assert acc.build() is tree and tree["steps"]["obs"][0, 0] == 7


def test_errors():
    acc = echo_go.TrajectoryAccumulator(_example())
    with pytest.raises(KeyError):
        acc.add("nope", {})
    acc.add("bootstrap", {"obs": np.zeros((1, 2), np.float32)})
    with pytest.raises(IndexError):
        acc.add("bootstrap", {"obs": np.zeros((1, 2), np.float32)})
    acc.reset()
    acc.add("bootstrap", {"obs": np.zeros((1, 2), np.float32)})
    with pytest.raises(TypeError):
        echo_go.TrajectoryAccumulator([np.zeros(2)])
    with pytest.raises(ValueError, match="no array leaves"):
        echo_go.TrajectoryAccumulator({"empty": {}})
    with pytest.raises(ValueError, match="leading dimension"):
        echo_go.TrajectoryAccumulator({"s": {"a": np.zeros((3, 1)), "b": np.zeros((4,))}})


def test_matches_echos():
    echo = pytest.importorskip("echo")
    ours, theirs = echo_go.TrajectoryAccumulator(_example()), echo.TrajectoryAccumulator(_example())
    for acc in (ours, theirs):
        for t in range(2):
            acc.add("steps", {"obs": np.full((1, 2), t + 1, np.float32), "action": np.array([t + 1], np.int32)})
        acc.add("episode", {"ret": np.float32(1.5), "len": np.ones(4, np.int32)})
    a, b = ours.build(), theirs.build()
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])
