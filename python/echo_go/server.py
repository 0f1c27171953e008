"""Server: echo's learner-side API, served by the Go engine.

A ``Server`` here runs the ``echo-server`` binary this package carries and
takes its batches over the learner socket (docs/learner.md), reading each
in place from the ring that the binary shares with it. The API is echo's:
code written for ``echo.Server`` runs unchanged.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Generator
from typing import Any

import numpy as np
import optree

from echo_go import _cuda, _frames
from echo_go._engine import Engine
from echo_go._spec import ExampleSpec, describe_example
from echo_go.learner import Learner, Sample, iterate

__all__ = ["Sample", "Server", "TcpTransport"]

# echo's TcpTransport listens on every interface.
_TCP_HOST = "0.0.0.0"


class TcpTransport:
    """Accept actors over TCP on ``port`` (0: any free port; see ``Server.port``).

    ``num_threads`` is kept for echo's signature; the Go engine has no
    such setting and ignores it.
    """

    def __init__(self, port: int, num_threads: int = 8):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not a TCP port")
        self.port = port
        self.num_threads = num_threads

    def __repr__(self) -> str:
        return f"TcpTransport(port={self.port}, num_threads={self.num_threads})"


class Server:
    """
    A learner's server: actors' samples in, fixed-size batches out.

    Args:
        example: Example pytree with numpy arrays (used to infer structure)
        batch_size: Number of samples per emitted batch
        transport: Optional TcpTransport. Omit for in-process use; call
            ``submit()`` to feed samples directly.
        num_buffers: Number of ring buffer batches (min 2, default 3)
        num_drainers: Number of threads draining from producer queues
            (the engine's ingress workers: at most one per core)
        producer_queue_size: Per-connection queue size
        pin_host_memory: CUDA-page-lock the ring buffers, so a downstream H2D
            copy is a real DMA transfer instead of a staging copy.

    Raises:
        TypeError: a leaf of ``example`` is not a numpy array, or has a
            dtype the engine does not store.
        ValueError: ``example`` has no leaves, or a size is out of range.
        RuntimeError: ``pin_host_memory`` is set and no CUDA runtime could
            be loaded.

    The engine (an ``echo-server`` process) starts with ``start()``, or
    with the first ``submit()`` or ``sample()`` for in-process use, and
    ends with ``close()``, with this Server's garbage collection, or with
    this process.

    Lifetime: the numpy arrays returned by ``sample()`` are read-only
    views of the ring. They are invalidated as soon as the next
    ``sample()`` call hands their slab back for reuse. Don't keep
    references to a batch beyond the next sample() call without
    ``np.copy`` (or ``dataset_iter(copy=True)``). The memory stays mapped
    while any view of it lives.
    """

    def __init__(
        self,
        example: Any,
        batch_size: int,
        transport: TcpTransport | None = None,
        num_buffers: int = 3,
        num_drainers: int = 8,
        producer_queue_size: int = 8,
        pin_host_memory: bool = False,
    ):
        self._spec: ExampleSpec = describe_example(example)
        _check_positive(batch_size=batch_size, num_drainers=num_drainers, producer_queue_size=producer_queue_size)
        if num_buffers < 2:
            raise ValueError(f"num_buffers must be >= 2, got {num_buffers}")
        if pin_host_memory:
            _cuda.load_runtime()  # fail here, as echo does, not at start()
        self._batch_size = batch_size
        self._transport = transport
        self._options = {
            "num-buffers": num_buffers,
            "num-drainers": num_drainers,
            "producer-queue-size": producer_queue_size,
        }
        self._pin_host_memory = pin_host_memory

        # _engine, _learner and _finalizer are written once, under _lock, by
        # the first call that needs the engine; _started and _closed are
        # written under _lock. _closed is read without it where a stale
        # False only means one more request to a server that is closing.
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._learner: Learner | None = None
        self._finalizer: weakref.finalize | None = None
        self._started = False
        self._closed = False

        # The connection for SUBMIT and RESET_HISTOGRAMS, made on first use;
        # written and used under _control_lock, one request at a time.
        self._control_lock = threading.Lock()
        self._control: _frames.Connection | None = None

    def start(self) -> None:
        """Start the engine and the transport (bind port, accept connections).

        Raises:
            RuntimeError: already started, closed, or the engine failed to
                start (the message carries its stderr).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("Server is closed")
            if self._started:
                raise RuntimeError("Server already started")
            self._run_engine()
            self._started = True

    @property
    def port(self) -> int:
        """The port the transport is listening on, valid after ``start()``."""
        if self._transport is None:
            raise RuntimeError("no transport configured; pass TcpTransport to __init__")
        with self._lock:
            if self._engine is None:
                raise RuntimeError("transport not started; call start() first")
            return self._engine.port

    @property
    def learner_socket(self) -> str:
        """The learner socket further learner processes ``attach()`` to."""
        with self._lock:
            if self._engine is None:
                raise RuntimeError("Server not started; call start() first")
            return self._engine.learner_socket

    def sample(self) -> Sample | None:
        """
        Block until a batch is ready. Returns None on shutdown.

        Each leaf of ``Sample.batch`` is a zero-copy, read-only view of the
        ring and is invalidated on the next ``sample()`` call. Use
        ``np.copy`` (or ``dataset_iter(copy=True)``) if you need to retain
        a batch beyond the next call.

        Raises:
            ConnectionError: the engine died (was killed) without closing.
        """
        with self._lock:
            if self._closed:
                return None
            learner = self._run_engine()
        try:
            return learner.sample()
        except ConnectionError as e:
            if self._closed:
                return None
            raise ConnectionError(f"lost the learner connection: {self._describe_engine()}") from e

    def dataset_iter(self, *, copy: bool = False) -> Generator[Sample, None, None]:
        """Yield Samples as batches become ready; returns on shutdown.

        Pass ``copy=True`` to deep-copy each batch and free the underlying
        ring slots for reuse on the next iteration.
        """
        return iterate(self.sample, copy=copy)

    def submit(self, data: Any) -> None:
        """Submit a single sample directly to the store (in-process / tests).

        Blocks while the ring is full, as an actor does.

        Raises:
            ValueError: ``data`` differs from the example in structure, or
                a leaf in dtype or shape (the message names the leaf).
            RuntimeError: the Server is closed, or the engine refused the
                sample.
        """
        payload = self._payload(data)
        with self._lock:
            if self._closed:
                raise RuntimeError("Server is closed")
            self._run_engine()
        self._control_request(_frames.SUBMIT, payload)

    def close(self) -> None:
        """Signal shutdown, causing sample() to return None.

        A ``sample()`` blocked in another thread returns None. Waits for
        the engine to exit. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, learner = self._engine, self._learner
        if engine is None:
            return
        engine.close()  # answers a blocked sample() with CLOSED, then exits
        with self._control_lock:
            if self._control is not None:
                self._control.close()
                self._control = None
        if learner is not None:
            learner.close()
        if self._finalizer is not None:
            self._finalizer.detach()

    def reset_histograms(self) -> None:
        """Reset the histogram fields on subsequent SampleInfo snapshots.
        Counters and gauges are unchanged.
        """
        with self._lock:
            if self._closed:
                return
            self._run_engine()
        self._control_request(_frames.RESET_HISTOGRAMS)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_engine(self) -> Learner:
        """Start the engine and the learner connection, once. Call under _lock."""
        if self._learner is not None:
            return self._learner
        tcp = None
        if self._transport is not None:
            tcp = f"{_TCP_HOST}:{self._transport.port}"
        engine = Engine(self._spec.spec_tree, self._batch_size, tcp, self._options)
        try:
            learner = Learner(
                engine.learner_socket,
                pin_host_memory=self._pin_host_memory,
                _structure=(self._spec.treedef, list(range(len(self._spec.leaves)))),
            )
        except BaseException:
            engine.kill()
            raise
        try:
            self._check_welcome(learner.spec)
        except BaseException:
            learner.close()
            engine.kill()
            raise
        self._finalizer = weakref.finalize(self, engine.kill)
        self._engine, self._learner = engine, learner
        return learner

    def _check_welcome(self, welcome: dict[str, Any]) -> None:
        """Check that the engine lays out samples as this example flattens."""
        leaves = welcome["leaves"]
        mine = self._spec.leaves
        same = welcome["tree"] == self._spec.tree and len(leaves) == len(mine)
        same = same and all(
            theirs["dtype"] == mine[j].dtype.name and tuple(theirs["shape"]) == mine[j].shape
            for j, theirs in enumerate(leaves)
        )
        if not same or welcome.get("batch_size") != self._batch_size:
            raise RuntimeError(
                "echo-server describes other samples than the example: "
                f"tree {welcome['tree']}, leaves {leaves}, batch size {welcome.get('batch_size')}"
            )

    def _payload(self, data: Any) -> bytes:
        """Check data against the example and return its bytes in flatten order."""
        leaves, treedef = optree.tree_flatten(data)
        if treedef != self._spec.treedef:
            raise ValueError(f"sample structure {treedef} differs from the example's {self._spec.treedef}")
        parts = []
        for leaf, spec in zip(leaves, self._spec.leaves):
            array = np.asarray(leaf)
            if array.dtype != spec.dtype:
                raise ValueError(f"leaf {spec.path}: dtype {array.dtype}, expected {spec.dtype}")
            if array.shape != spec.shape:
                raise ValueError(f"leaf {spec.path}: shape {array.shape}, expected {spec.shape}")
            parts.append(np.ascontiguousarray(array).tobytes())
        return b"".join(parts)

    def _control_request(self, kind: int, body: bytes = b"") -> None:
        """Send one request on the control connection and wait for OK."""
        with self._control_lock:
            if self._closed:
                raise RuntimeError("Server is closed")
            try:
                if self._control is None:
                    self._control = _frames.Connection(self._engine_socket())
                    self._control.close_fds()  # the learner connection maps the ring
                answer, _ = self._control.request(kind, body)
            except ConnectionError as e:
                if self._closed:
                    raise RuntimeError("Server is closed") from e
                raise ConnectionError(f"lost the control connection: {self._describe_engine()}") from e
        if answer != _frames.OK:
            name = _frames.FRAME_NAMES.get(answer, answer)
            raise _frames.ProtocolError(f"echo-server answered {_frames.FRAME_NAMES[kind]} with {name}")

    def _engine_socket(self) -> str:
        with self._lock:
            assert self._engine is not None
            return self._engine.learner_socket

    def _describe_engine(self) -> str:
        with self._lock:
            engine = self._engine
        return engine.describe(wait=0.5) if engine else "echo-server not started"


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
