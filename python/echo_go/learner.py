"""Learners: processes that take batches from a server's learner socket.

A ``Learner`` holds one connection to a running echo-server and read-only
mappings of its ring and of the learner's offer page. Each ``sample()``
takes the next complete batch and returns views of it in place: no byte of
a batch is copied on its way here. When the server has set the batch aside
in the offer page already (it does for a learner that takes batches alone),
taking it costs one write to the socket and no wait; otherwise ``sample()``
asks for it and waits for the answer.
``Server`` uses one for the process that started the server; ``attach``
makes one for any further learner process on the same host (data-parallel
ranks), and each batch goes to exactly one of them.
"""

from __future__ import annotations

import mmap
import os
import platform
import threading
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import numpy as np
import optree

from echo_go import _cuda, _frames
from echo_go._spec import numpy_dtype, structure_of
from echo_go.info import BATCH_BODY_BYTES, SampleInfo, decode_batch

# The offer page (docs/learner.md, "Offers"): the record of ticket t starts
# at (t % 2) * _OFFER_STRIDE, and its first 8 bytes, the ticket, are
# written last. Reading the ticket and then the record needs loads that
# stay in program order, which x86-64 guarantees; elsewhere this package
# leaves the page alone and asks for every batch.
_OFFER_STRIDE = 512
_OFFERS_READABLE = platform.machine().lower() in ("x86_64", "amd64")


class Sample(NamedTuple):
    """A batch paired with a snapshot of backpressure metrics."""

    batch: Any
    info: SampleInfo


class _Leaf(NamedTuple):
    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


class Learner:
    """A learner attached to a running echo-server by its learner socket.

    Args:
        socket_path: the server's learner socket (``Server.learner_socket``,
            or the ``learner_socket`` that ``echo-server`` prints).
        pin_host_memory: CUDA-page-lock the mapping of the ring, so that a
            host-to-device copy of a batch is a DMA transfer.

    Raises:
        ConnectionError: the socket does not answer as a server's does.
        RuntimeError: ``pin_host_memory`` is set and the mapping could not
            be page-locked.

    Lifetime: each leaf of ``sample().batch`` is a read-only view of the
    server's ring. The batch is this learner's until its next ``sample()``
    or ``release()``; after that the server reuses its slab, and the views
    show whatever is written there next. Copy (``np.copy``, or
    ``dataset_iter(copy=True)``) what must outlive that. The mapping stays
    valid while any view of it lives, even after ``close()``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        pin_host_memory: bool = False,
        _structure: tuple[optree.PyTreeSpec, list[int]] | None = None,
    ):
        self._conn = _frames.Connection(os.fspath(socket_path))
        self._pin: _cuda.HostRegistration | None = None
        try:
            welcome = self._conn.welcome
            self._batch_size = int(welcome["batch_size"])
            self._num_slabs = int(welcome["num_slabs"])
            self._slab_bytes = int(welcome["slab_bytes"])
            self._mapping_bytes = int(welcome["mapping_bytes"])
            self._leaves = [_parse_leaf(leaf) for leaf in welcome["leaves"]]
            self._check_layout()
            self._treedef, self._order = _structure or structure_of(welcome["tree"])
            self._mm = mmap.mmap(
                self._conn.memfd,
                self._mapping_bytes,
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ,
            )
            offer_bytes = int(welcome["offer_bytes"])
            if offer_bytes < 2 * _OFFER_STRIDE:
                raise _frames.ProtocolError(f"{self.socket_path}: an offer page of {offer_bytes} bytes")
            self._offer_mm = mmap.mmap(self._conn.offer_fd, offer_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            # The mappings keep the memory alive; the descriptors are not needed.
            self._conn.close_fds()
            self._base = np.frombuffer(self._mm, dtype=np.uint8)
            # Each record's ticket as a u64, and the records as bytes.
            self._offer_tickets = np.frombuffer(self._offer_mm, dtype="<u8")
            self._offers = memoryview(self._offer_mm)
            self._views: list[list[np.ndarray] | None] = [None] * self._num_slabs
            if pin_host_memory:
                self._pin = _cuda.register(self._base.ctypes.data, self._mapping_bytes)
        except BaseException:
            self._conn.close()
            raise
        self._lock = threading.Lock()  # held for each request and its answer
        self._slab: int | None = None  # written under _lock
        self._ticket = 0  # the ticket of the last batch taken; under _lock
        self._closing = False  # set once by close(); read by sample()
        self._server_closed = False  # set under _lock on CLOSED

    @property
    def spec(self) -> dict[str, Any]:
        """The server's WELCOME: batch size, slab layout, leaves and tree."""
        return self._conn.welcome

    @property
    def socket_path(self) -> str:
        return self._conn.socket_path

    @property
    def port(self) -> int:
        """The server's TCP port for actors (0 when it has none)."""
        return int(self._conn.welcome.get("port", 0))

    @property
    def mapping(self) -> np.ndarray:
        """The whole ring as a read-only uint8 array; batches are views into it."""
        return self._base

    @property
    def slab(self) -> int | None:
        """The slab of the batch this learner holds, or None."""
        return self._slab

    def sample(self) -> Sample | None:
        """Block until a batch is ready; return None once the server is closed.

        The previous batch's slab goes back to the server first, and its
        views die (see the class's lifetime rule).

        Raises:
            ConnectionError: the server ended the connection without
                closing (it died, or was killed).
        """
        with self._lock:
            if self._closing or self._server_closed:
                return None
            self._slab = None
            try:
                body = self._take_offer()
                if body is None:
                    kind, body = self._conn.request(_frames.NEXT)
                    if kind == _frames.CLOSED:
                        self._server_closed = True
                        return None
                    if kind != _frames.BATCH:
                        raise _frames.ProtocolError(
                            f"{self.socket_path} answered NEXT with {_frames.FRAME_NAMES.get(kind, kind)}"
                        )
            except OSError:
                if self._closing:
                    return None
                raise
            ticket, slab, info = decode_batch(body)
            if slab >= self._num_slabs:
                raise _frames.ProtocolError(f"{self.socket_path} sent slab {slab} of {self._num_slabs}")
            self._ticket = ticket
            self._slab = slab
            return Sample(batch=self._batch_in(slab), info=info)

    def _take_offer(self) -> bytes | None:
        """Take the batch the server set aside, if it did: its record, or None.

        The record is read before TAKE goes out, and the server writes
        this record again only after that TAKE: what was read is whole.
        Under _lock.
        """
        if not _OFFERS_READABLE:
            return None
        ticket = self._ticket + 1
        start = (ticket % 2) * _OFFER_STRIDE
        if int(self._offer_tickets[start // 8]) != ticket:
            return None
        body = bytes(self._offers[start : start + BATCH_BODY_BYTES])
        self._conn.take(ticket)
        return body

    def dataset_iter(self, *, copy: bool = False) -> Generator[Sample, None, None]:
        """Yield Samples as batches become ready; return once the server closes.

        Pass ``copy=True`` to deep-copy each batch, so that it outlives the
        next iteration.
        """
        return iterate(self.sample, copy=copy)

    def release(self) -> None:
        """Give the batch held back to the server without asking for another."""
        with self._lock:
            if self._closing or self._server_closed:
                return
            self._slab = None
            self._conn.request(_frames.RELEASE)

    def close(self) -> None:
        """End this learner's connection; the server keeps serving others.

        A ``sample()`` blocked in another thread returns None. The slab
        held goes back to the server. Idempotent.
        """
        self._closing = True
        self._conn.shutdown()
        with self._lock:
            self._slab = None
            self._conn.close()
            self._unmap()

    def _unmap(self) -> None:
        if self._pin is not None:
            self._pin.unregister()
            self._pin = None
        self._base = np.empty(0, dtype=np.uint8)
        self._views = [None] * self._num_slabs  # the cache's views, not the caller's
        self._offer_tickets = np.zeros(2 * _OFFER_STRIDE // 8, dtype="<u8")
        self._offers.release()
        self._offer_mm.close()
        try:
            self._mm.close()
        except BufferError:
            pass  # views of a batch still live; the mapping goes with the last

    def _batch_in(self, slab: int) -> Any:
        # Views of _base, not of _mm: _base holds a buffer export of the
        # mapping (np.ndarray(buffer=mmap) would not), so the mapping
        # cannot be unmapped under a view that is still alive.
        # A slab's views are the same arrays every time it comes round:
        # built once, so that a batch costs a tree, not an array per leaf.
        views = self._views[slab]
        if views is None:
            start = slab * self._slab_bytes
            arrays = [
                np.ndarray(
                    shape=(self._batch_size,) + leaf.shape,
                    dtype=leaf.dtype,
                    buffer=self._base,
                    offset=start + leaf.offset,
                )
                for leaf in self._leaves
            ]
            views = self._views[slab] = [arrays[j] for j in self._order]
        return optree.tree_unflatten(self._treedef, views)

    def _check_layout(self) -> None:
        if self._batch_size < 1 or self._num_slabs < 1:
            raise _frames.ProtocolError(f"{self.socket_path} sent an empty ring")
        if self._num_slabs * self._slab_bytes > self._mapping_bytes:
            raise _frames.ProtocolError(
                f"{self.socket_path}: {self._num_slabs} slabs of {self._slab_bytes} bytes "
                f"do not fit a mapping of {self._mapping_bytes}"
            )
        for leaf in self._leaves:
            size = self._batch_size * leaf.dtype.itemsize * int(np.prod(leaf.shape, dtype=np.int64))
            if leaf.offset < 0 or leaf.offset + size > self._slab_bytes:
                raise _frames.ProtocolError(
                    f"{self.socket_path}: leaf {leaf.path} ({size} bytes at {leaf.offset}) "
                    f"does not fit a slab of {self._slab_bytes} bytes"
                )

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate(sample: Callable[[], Sample | None], *, copy: bool) -> Generator[Sample, None, None]:
    """Yield what ``sample`` returns until it returns None: ``dataset_iter``'s loop.

    With ``copy``, each batch is deep-copied, so that it outlives the next
    iteration.
    """
    while True:
        got = sample()
        if got is None:
            return
        if copy:
            got = Sample(batch=optree.tree_map(np.copy, got.batch), info=got.info)
        yield got


def attach(socket_path: str | os.PathLike[str], *, pin_host_memory: bool = False) -> Learner:
    """Attach a learner to the server listening on ``socket_path``.

    For learner processes beside the one that started the server: each
    batch goes to exactly one of the learners attached. The batch's
    structure is the server's (dicts, lists, tuples and None, as echo's
    batches have them).
    """
    return Learner(socket_path, pin_host_memory=pin_host_memory)


def _parse_leaf(leaf: dict[str, Any]) -> _Leaf:
    return _Leaf(
        path=str(leaf["path"]),
        dtype=numpy_dtype(leaf["dtype"]),
        shape=tuple(int(d) for d in leaf["shape"]),
        offset=int(leaf["offset"]),
    )
