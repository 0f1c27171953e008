"""Batches are views of the server's ring: no byte is copied on the way."""

from __future__ import annotations

import mmap

import numpy as np
import optree
from conftest import example, ids_of, sample_of

import echo_go


def _base_of(array: np.ndarray):
    """Follow .base (and a memoryview's .obj) to the object that owns the bytes."""
    owner = array
    while True:
        if isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        elif isinstance(owner, memoryview):
            owner = owner.obj
        else:
            return owner


def test_batch_leaves_are_views_of_the_mapping():
    with echo_go.Server(example(), batch_size=4, num_buffers=3) as server:
        server.start()
        learner = server._learner
        spec = learner.spec
        offsets = {leaf["path"]: leaf["offset"] for leaf in spec["leaves"]}
        for round_ in range(spec["num_slabs"] + 1):
            for i in range(4):
                server.submit(sample_of(4 * round_ + i))
            batch = server.sample().batch
            slab = learner.slab
            mapping = learner.mapping
            start = mapping.ctypes.data + slab * spec["slab_bytes"]
            for path, leaf in batch.items():
                assert isinstance(_base_of(leaf), mmap.mmap), path
                assert not leaf.flags.writeable and not leaf.flags.owndata
                assert np.shares_memory(leaf, mapping), path
                assert leaf.ctypes.data == start + offsets[path], path
            assert ids_of(batch) == [4 * round_ + i for i in range(4)]
            del batch, leaf


def test_an_old_view_shows_what_the_ring_holds_now():
    # With two slabs, the third batch lands where the first was: a view of
    # the first batch, kept past its lifetime, shows the third's bytes. A
    # copy anywhere on the way would leave it showing the first's.
    with echo_go.Server(example(), batch_size=2, num_buffers=2) as server:
        server.start()
        learner = server._learner
        for i in range(2):
            server.submit(sample_of(i))
        first = server.sample().batch["obs"]
        first_slab = learner.slab
        assert first[:, 0].tolist() == [0, 1]
        for i in range(2, 4):
            server.submit(sample_of(i))
        assert ids_of(server.sample().batch) == [2, 3]
        for i in range(4, 6):
            server.submit(sample_of(i))
        third = server.sample().batch
        assert learner.slab == first_slab
        assert ids_of(third) == [4, 5]
        assert first[:, 0].tolist() == [4, 5]
        assert first.ctypes.data == third["obs"].ctypes.data


def test_tcp_bytes_land_in_the_learners_view_in_place():
    ex = {"pixels": np.zeros((16, 16), np.uint8), "step": np.zeros((), np.int64)}
    with echo_go.Server(ex, batch_size=4, transport=echo_go.TcpTransport(0)) as server:
        server.start()
        learner = server._learner
        client = echo_go.TcpClient("127.0.0.1", server.port, ex)
        rng = np.random.default_rng(7)
        sent = [{"pixels": rng.integers(0, 255, (16, 16), np.uint8), "step": np.array(i, np.int64)} for i in range(4)]
        for s in sent:
            client.send(s)
        client.wait()
        batch = server.sample().batch
        offset = {leaf["path"]: leaf["offset"] for leaf in learner.spec["leaves"]}["pixels"]
        start = learner.slab * learner.spec["slab_bytes"] + offset
        raw = learner.mapping[start : start + 4 * 256]
        np.testing.assert_array_equal(raw.reshape(4, 16, 16), np.stack([s["pixels"] for s in sent]))
        assert np.shares_memory(batch["pixels"], raw)
        np.testing.assert_array_equal(batch["step"], np.arange(4))
        client.close()
        del batch, raw


def test_attached_batches_are_views_too():
    with echo_go.Server(example(), batch_size=2) as server:
        server.start()
        with echo_go.attach(server.learner_socket) as learner:
            for i in range(2):
                server.submit(sample_of(i))
            batch = learner.sample().batch
            assert optree.tree_structure(batch) == optree.tree_structure(example())
            assert ids_of(batch) == [0, 1]
            for leaf in batch.values():
                assert np.shares_memory(leaf, learner.mapping)
            del batch, leaf
