"""TcpClient: an actor's connection to a server, in echo's wire protocol 1.

The protocol (docs/protocol.md): the server opens with a handshake that
describes one sample's leaves; the client then sends samples back to back,
each the raw bytes of its leaves in flatten order; the server acknowledges
each sample it holds with one byte ``0x01``. This client speaks to echo's
servers and to this package's alike.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from typing import Any

import numpy as np
import optree

_log = logging.getLogger(__name__)

_MAGIC = b"ECHO"
_VERSION = 1
_ACK = 0x01
_U32 = struct.Struct("<I")
# A handshake larger than this is not a server's: refuse rather than allocate.
_MAX_LEAVES = 1 << 16
_MAX_NDIM = 64
# How often a send() waiting for the window checks that the connection lives.
_WINDOW_POLL_S = 0.1


class ConnectionClosedError(ConnectionError):
    """Raised on send() after a TcpClient has been closed or its peer has disconnected."""


class TcpClient:
    """TCP client that sends pytree samples to an echo Server.

    Args:
        host: Server hostname or IP
        port: Server TCP port
        data_sample: Example pytree (used to validate against the server spec)
        max_inflight_msgs: Max unacknowledged messages before send() blocks

    Raises:
        ValueError: the peer is not an echo server, speaks another wire
            version, or wants other samples than ``data_sample``.
        TypeError: a leaf of ``data_sample`` is not a numpy array.
        OSError: the connection failed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        data_sample: optree.PyTree[np.ndarray],
        max_inflight_msgs: int = 32,
    ):
        self._peer = f"{host}:{port}"
        self._sock = socket.create_connection((host, port))
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._payload_size = self._handshake(data_sample)
        except BaseException:
            self._sock.close()
            raise
        self._closed = threading.Event()
        # One permit per sample that may be unacknowledged: send() takes
        # one, each ack gives one back.
        self._window = threading.BoundedSemaphore(max_inflight_msgs)
        self._unacked = 0  # guarded by _acked
        self._acked = threading.Condition()
        self._ack_thread = threading.Thread(target=self._read_acks, name=f"echo ack reader {self._peer}", daemon=True)
        self._ack_thread.start()

    def send(self, data: optree.PyTree[np.ndarray]) -> None:
        """Send a pytree sample to the server.

        Blocks while ``max_inflight_msgs`` samples are unacknowledged.

        Raises:
            ConnectionClosedError: client closed or peer disconnected.
            ValueError: payload-size mismatch.
        """
        if self._closed.is_set():
            raise ConnectionClosedError(f"TcpClient for {self._peer} is closed")
        leaves = optree.tree_leaves(data)
        buffers = [_bytes_of(leaf) for leaf in leaves]
        size = sum(len(b) for b in buffers)
        if size != self._payload_size:
            raise ValueError(f"Payload size {size} != expected {self._payload_size}")

        with self._acked:
            self._unacked += 1
        while not self._window.acquire(timeout=_WINDOW_POLL_S):
            if self._closed.is_set():  # no ack will come to open the window
                self._settle(1)
                raise ConnectionClosedError(f"TcpClient for {self._peer} connection lost")
        try:
            self._sock.sendall(b"".join(buffers))
        except OSError as e:
            self._closed.set()
            self._window.release()
            self._settle(1)
            raise ConnectionClosedError(f"TcpClient for {self._peer} connection lost") from e

    def wait(self) -> None:
        """Block until all in-flight messages have been acknowledged.

        Returns early if the connection ends first.
        """
        with self._acked:
            self._acked.wait_for(lambda: self._unacked == 0 or self._closed.is_set())

    def close(self) -> None:
        """Close the client. Idempotent."""
        if self._closed.is_set() and self._sock.fileno() < 0:
            return
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._ack_thread.join(timeout=1.0)

    def _handshake(self, data_sample: Any) -> int:
        """Read the server's handshake, check it against data_sample, return payload size."""
        magic = self._recv_exact(4)
        if magic != _MAGIC:
            raise ValueError(f"Unexpected handshake magic {magic!r} from {self._peer}; is the peer an echo server?")
        version = self._recv_exact(1)[0]
        if version != _VERSION:
            raise ValueError(
                f"Unsupported echo wire version {version} from {self._peer} (this client supports {_VERSION})"
            )
        theirs = self._read_leaf_specs()

        leaves = optree.tree_leaves(data_sample)
        if not all(isinstance(leaf, np.ndarray) for leaf in leaves):
            raise TypeError("All leaves of data_sample must be numpy arrays")
        mine = [(leaf.dtype.itemsize, tuple(leaf.shape)) for leaf in leaves]
        if theirs != mine:
            raise ValueError(f"Server spec mismatch: {_describe_mismatch(theirs, mine)}")
        return sum(size * int(np.prod(shape, dtype=np.int64)) for size, shape in mine)

    def _read_leaf_specs(self) -> list[tuple[int, tuple[int, ...]]]:
        (count,) = _U32.unpack(self._recv_exact(4))
        if count > _MAX_LEAVES:
            raise ValueError(f"{self._peer} describes {count} leaves; is the peer an echo server?")
        specs = []
        for _ in range(count):
            dtype_size, ndim = struct.unpack("<II", self._recv_exact(8))
            if ndim > _MAX_NDIM:
                raise ValueError(f"{self._peer} describes a leaf of {ndim} dimensions")
            shape = struct.unpack(f"<{ndim}I", self._recv_exact(4 * ndim))
            specs.append((dtype_size, tuple(shape)))
        return specs

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"{self._peer} closed the connection during the handshake")
            buf += chunk
        return bytes(buf)

    def _read_acks(self) -> None:
        """Count acks until the connection ends; runs on its own thread."""
        try:
            while not self._closed.is_set():
                acks = self._sock.recv(4096)
                if not acks:
                    break
                if acks.count(_ACK) != len(acks):
                    _log.warning("%s sent a byte that is not an ack; closing", self._peer)
                    break
                for _ in acks:
                    self._window.release()
                self._settle(len(acks))
        except OSError as e:
            if not self._closed.is_set():
                _log.warning("ack reader for %s stopped: %s", self._peer, e)
        except ValueError:  # more acks than samples sent: BoundedSemaphore overflow
            _log.warning("%s acknowledged more samples than were sent; closing", self._peer)
        finally:
            self._closed.set()
            with self._acked:
                self._acked.notify_all()

    def _settle(self, n: int) -> None:
        """Count n samples as no longer in flight."""
        with self._acked:
            self._unacked -= n
            if self._unacked <= 0:
                self._acked.notify_all()


def _bytes_of(leaf: Any) -> bytes:
    """A leaf's bytes, C order, native layout."""
    return leaf.tobytes() if isinstance(leaf, np.ndarray) else np.asarray(leaf).tobytes()


def _describe_mismatch(theirs: list[tuple[int, tuple[int, ...]]], mine: list[tuple[int, tuple[int, ...]]]) -> str:
    if len(theirs) != len(mine):
        return f"the server's samples have {len(theirs)} leaves, data_sample has {len(mine)}"
    for i, ((their_size, their_shape), (my_size, my_shape)) in enumerate(zip(theirs, mine)):
        if (their_size, their_shape) != (my_size, my_shape):
            return (
                f"leaf {i}: server has dtype_size {their_size}, shape {list(their_shape)}; "
                f"data_sample has dtype_size {my_size}, shape {list(my_shape)}"
            )
    return "no difference"
