"""echo's documented usage, through ``import echo_go as echo``."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import optree
import pytest
from conftest import example, ids_of, sample_of

import echo_go as echo

ECHO_EXPORTS = {
    "Server",
    "Sample",
    "SampleInfo",
    "HistSnapshot",
    "TcpTransport",
    "TcpClient",
    "ConnectionClosedError",
    "TrajectoryAccumulator",
    "__version__",
}
INFO_FIELDS = [
    "store_size",
    "active_connections",
    "queue_depth_sum",
    "queue_depth_max",
    "push_blocked_count",
    "samples_inserted_total",
    "notify_count",
    "cas_success_total",
    "cas_failure_total",
    "reservation_retries_total",
]
HIST_FIELDS = ["count", "min_ns", "max_ns", "mean_ns", "p50_ns", "p90_ns", "p99_ns"]


def test_exports_echos_names():
    assert ECHO_EXPORTS <= set(echo.__all__)
    for name in ECHO_EXPORTS:
        assert hasattr(echo, name), name
    assert isinstance(echo.__version__, str) and echo.__version__


def test_in_process_submit_then_sample():
    server = echo.Server(example(), batch_size=4)  # no transport, no start()
    try:
        for i in range(4):
            server.submit(sample_of(i))
        smp = server.sample()
        assert isinstance(smp, echo.Sample)
        batch, info = smp
        assert set(batch) == {"obs", "reward", "done"}
        assert batch["obs"].shape == (4, 8) and batch["obs"].dtype == np.float32
        assert batch["reward"].shape == (4,) and batch["done"].dtype == np.uint8
        np.testing.assert_array_equal(batch["obs"], np.repeat(np.arange(4, dtype=np.float32), 8).reshape(4, 8))
        assert batch["reward"].tolist() == [0, 0.5, 1, 1.5]
        assert batch["done"].tolist() == [0, 1, 0, 1]
        assert isinstance(info, echo.SampleInfo)
    finally:
        server.close()
    assert server.sample() is None


def test_batch_structure_is_the_examples():
    Pair = collections.namedtuple("Pair", "left right")
    ex = {
        "a": [np.zeros(2, np.int64), None, (np.zeros((), np.float64),)],
        "p": Pair(np.zeros(1, np.int8), np.zeros(3, np.uint16)),
    }
    with echo.Server(ex, batch_size=2) as server:
        for value in (1, 2):
            server.submit(optree.tree_map(lambda x, v=value: np.full_like(x, v), ex))
        batch = server.sample().batch
    assert optree.tree_structure(batch) == optree.tree_structure(ex)
    assert isinstance(batch["p"], Pair) and isinstance(batch["a"], list) and batch["a"][1] is None
    assert batch["a"][2][0].tolist() == [1.0, 2.0]
    assert batch["p"].right.shape == (2, 3)


def test_dataset_iter_copy_outlives_the_next_batch():
    with echo.Server(example(), batch_size=2, num_buffers=4) as server:
        for i in range(6):
            server.submit(sample_of(i))
        it = server.dataset_iter(copy=True)
        kept = [next(it).batch for _ in range(3)]
        for n, batch in enumerate(kept):
            assert batch["obs"].flags.writeable and batch["obs"].flags.owndata
            assert ids_of(batch) == [2 * n, 2 * n + 1]


def test_dataset_iter_views_and_end_on_close():
    server = echo.Server(example(), batch_size=2)
    for i in range(4):
        server.submit(sample_of(i))
    seen = []
    for smp in server.dataset_iter():
        assert not smp.batch["obs"].flags.writeable  # a view of the ring
        seen += ids_of(smp.batch)
        if len(seen) == 4:
            server.close()
    assert seen == [0, 1, 2, 3]


def test_close_wakes_a_blocked_sample():
    server = echo.Server(example(), batch_size=4)
    server.start()
    got = []
    t = threading.Thread(target=lambda: got.append(server.sample()))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    server.close()
    t.join(5)
    assert not t.is_alive() and got == [None]
    assert server.sample() is None
    server.close()  # idempotent


def test_sample_info_moves():
    with echo.Server(example(), batch_size=2, num_buffers=4) as server:
        infos = []
        for n in range(3):
            for i in range(2):
                server.submit(sample_of(2 * n + i))
            infos.append(server.sample().info)
        for info in infos:
            for name in INFO_FIELDS:
                assert isinstance(getattr(info, name), int), name
            for hist in (info.drain_round, info.memcpy, info.queue_dwell):
                assert isinstance(hist, echo.HistSnapshot)
                for name in HIST_FIELDS:
                    assert isinstance(getattr(hist, name), float if name == "mean_ns" else int), name
        inserted = [info.samples_inserted_total for info in infos]
        assert inserted == sorted(inserted) and inserted[-1] > inserted[0] and inserted[-1] >= 6
        assert infos[-1].notify_count >= infos[0].notify_count >= 1
        server.reset_histograms()
        for i in range(2):
            server.submit(sample_of(i))
        after = server.sample().info
        assert after.samples_inserted_total >= inserted[-1]  # counters survive the reset


def test_port_follows_echos_rules():
    with echo.Server(example(), batch_size=2) as server, pytest.raises(RuntimeError, match="no transport"):
        _ = server.port
    with echo.Server(example(), batch_size=2, transport=echo.TcpTransport(0)) as server:
        with pytest.raises(RuntimeError, match="not started"):
            _ = server.port
        server.start()
        assert 0 < server.port < 65536
        with pytest.raises(RuntimeError):
            server.start()


@pytest.mark.parametrize(
    "bad, error",
    [
        ({}, ValueError),
        ({"a": None}, ValueError),
        ({"a": 1.0}, TypeError),
        ({"a": [np.zeros(2), "x"]}, TypeError),
        ({"a": np.zeros(2, np.complex64)}, TypeError),
    ],
)
def test_server_rejects_a_bad_example(bad, error):
    with pytest.raises(error):
        echo.Server(bad, batch_size=2)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2, "num_buffers": 1}])
def test_server_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        echo.Server(example(), **kwargs)


def test_submit_names_the_leaf_that_differs():
    with echo.Server(example(), batch_size=2) as server:
        wrong_dtype = sample_of(1) | {"obs": np.zeros(8, np.float64)}
        with pytest.raises(ValueError, match="obs.*float64"):
            server.submit(wrong_dtype)
        wrong_shape = sample_of(1) | {"reward": np.zeros(2, np.float32)}
        with pytest.raises(ValueError, match=r"reward.*shape"):
            server.submit(wrong_shape)
        with pytest.raises(ValueError, match="structure"):
            server.submit({"obs": np.zeros(8, np.float32)})
        # The server still takes good samples after refusing bad ones.
        server.submit(sample_of(1))
        server.submit(sample_of(2))
        assert ids_of(server.sample().batch) == [1, 2]


def test_submit_after_close_raises():
    server = echo.Server(example(), batch_size=2)
    server.submit(sample_of(0))
    server.close()
    with pytest.raises(RuntimeError, match="closed"):
        server.submit(sample_of(1))
