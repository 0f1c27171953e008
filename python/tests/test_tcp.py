"""Actors over TCP: echo's own TcpClient and this package's."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
from conftest import example, ids_of, sample_of

import echo_go


def _echo_or_skip():
    try:
        import echo
    except ImportError as e:
        if os.environ.get("ECHO_REQUIRE_INTEROP"):
            raise
        pytest.skip(f"echo is not installed ({e}); set ECHO_REQUIRE_INTEROP=1 to fail instead")
    return echo


def _take(server, n):
    """Take batches until n samples came; return their ids and the infos."""
    ids, infos = [], []
    for smp in server.dataset_iter(copy=True):
        ids += ids_of(smp.batch)
        infos.append(smp.info)
        if len(ids) >= n:
            break
    return ids, infos


def _feed(client_class, port, actors, per_actor):
    clients = [client_class("127.0.0.1", port, example()) for _ in range(actors)]

    def run(a, client):
        for i in range(per_actor):
            client.send(sample_of(1000 * a + i))
        client.wait()

    threads = [threading.Thread(target=run, args=(a, c)) for a, c in enumerate(clients)]
    for t in threads:
        t.start()
    return clients, threads


@pytest.mark.parametrize("client", ["echo", "echo_go"])
def test_tcp_actors_feed_the_server(client):
    client_class = _echo_or_skip().TcpClient if client == "echo" else echo_go.TcpClient
    actors, per_actor = 4, 24
    with echo_go.Server(example(), batch_size=8, transport=echo_go.TcpTransport(0)) as server:
        server.start()
        clients, threads = _feed(client_class, server.port, actors, per_actor)
        ids, infos = _take(server, actors * per_actor)
        for t in threads:
            t.join(10)
        for c in clients:
            c.close()
    assert sorted(ids) == sorted(1000 * a + i for a in range(actors) for i in range(per_actor))
    # Each actor's samples arrive in the order it sent them.
    for a in range(actors):
        mine = [i for i in ids if i // 1000 == a]
        assert mine == sorted(mine)
    assert infos[-1].samples_inserted_total >= actors * per_actor
    assert max(info.active_connections for info in infos) >= 1


def test_echo_go_client_feeds_echos_server():
    echo = _echo_or_skip()
    server = echo.Server(example(), batch_size=4, transport=echo.TcpTransport(0))
    server.start()
    client = echo_go.TcpClient("127.0.0.1", server.port, example())
    try:
        for i in range(8):
            client.send(sample_of(i))
        client.wait()
        got = ids_of(server.sample().batch) + ids_of(server.sample().batch)
        assert got == list(range(8))
    finally:
        client.close()
        server.close()


def test_client_refuses_a_server_with_other_samples():
    with echo_go.Server(example(), batch_size=2, transport=echo_go.TcpTransport(0)) as server:
        server.start()
        other = example() | {"obs": np.zeros(9, np.float32)}
        with pytest.raises(ValueError, match="spec mismatch"):
            echo_go.TcpClient("127.0.0.1", server.port, other)
        with pytest.raises(TypeError):
            echo_go.TcpClient("127.0.0.1", server.port, example() | {"obs": [0.0] * 8})
        client = echo_go.TcpClient("127.0.0.1", server.port, example())
        with pytest.raises(ValueError, match="Payload size"):
            client.send(sample_of(0) | {"obs": np.zeros(4, np.float32)})
        client.close()
        client.close()  # idempotent
        with pytest.raises(echo_go.ConnectionClosedError):
            client.send(sample_of(0))


class _FakeServer:
    """A TCP listener that sends a chosen handshake, then acks on demand."""

    def __init__(self, handshake: bytes):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.received = 0
        self._handshake = handshake
        self.conn: socket.socket | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.conn, _ = self._listener.accept()
        self.conn.sendall(self._handshake)
        self._accepted.set()

    def ack(self, n: int):
        self._accepted.wait(5)
        self.conn.sendall(b"\x01" * n)

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self._listener.close()


def _handshake_for(sample) -> bytes:
    import optree

    leaves = optree.tree_leaves(sample)
    out = b"ECHO\x01" + struct.pack("<I", len(leaves))
    for leaf in leaves:
        out += struct.pack("<II", leaf.dtype.itemsize, leaf.ndim) + struct.pack(f"<{leaf.ndim}I", *leaf.shape)
    return out


def test_client_checks_magic_and_version():
    for handshake, message in ((b"HTTP/1.1", "magic"), (b"ECHO\x02", "version")):
        fake = _FakeServer(handshake)
        with pytest.raises(ValueError, match=message):
            echo_go.TcpClient("127.0.0.1", fake.port, example())
        fake.close()


def test_max_inflight_msgs_bounds_unacked_samples():
    fake = _FakeServer(_handshake_for(example()))
    client = echo_go.TcpClient("127.0.0.1", fake.port, example(), max_inflight_msgs=2)
    try:
        client.send(sample_of(0))
        client.send(sample_of(1))
        third = threading.Thread(target=client.send, args=(sample_of(2),))
        third.start()
        time.sleep(0.3)
        assert third.is_alive()  # two unacked: the window is shut
        fake.ack(1)
        third.join(5)
        assert not third.is_alive()
        waiter = threading.Thread(target=client.wait)
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive()  # two still unacked
        fake.ack(2)
        waiter.join(5)
        assert not waiter.is_alive()
    finally:
        client.close()
        fake.close()


def test_send_after_the_peer_left_raises_connection_closed():
    fake = _FakeServer(_handshake_for(example()))
    client = echo_go.TcpClient("127.0.0.1", fake.port, example(), max_inflight_msgs=1)
    try:
        client.send(sample_of(0))
        fake.close()
        with pytest.raises(echo_go.ConnectionClosedError):
            for i in range(1000):  # the window is shut and no ack will come
                client.send(sample_of(i))
    finally:
        client.close()
