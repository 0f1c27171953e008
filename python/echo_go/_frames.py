"""Frames of the learner protocol, version 2 (docs/learner.md).

A frame is ``length u32 | type u8 | body``, little-endian, where ``length``
counts the type byte and the body. ``Connection`` is one learner-side
connection to a server's learner socket: it says HELLO, takes the WELCOME
and the two memfds that ride on it (the ring and the offer page), and then
sends requests and reads their answers, one at a time.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

PROTOCOL_VERSION = 2

# Learner to server.
HELLO = 1
NEXT = 2
SUBMIT = 3
RESET_HISTOGRAMS = 4
CLOSE = 5
RELEASE = 6
TAKE = 7
# Server to learner.
WELCOME = 11
BATCH = 12
CLOSED = 13
OK = 14
ERROR = 15

FRAME_NAMES = {
    HELLO: "HELLO",
    NEXT: "NEXT",
    SUBMIT: "SUBMIT",
    RESET_HISTOGRAMS: "RESET_HISTOGRAMS",
    CLOSE: "CLOSE",
    RELEASE: "RELEASE",
    TAKE: "TAKE",
    WELCOME: "WELCOME",
    BATCH: "BATCH",
    CLOSED: "CLOSED",
    OK: "OK",
    ERROR: "ERROR",
}

MAX_BODY_BYTES = 64 << 20
_HEADER = struct.Struct("<IB")
_TAKE = struct.Struct("<IBQ")
_HELLO_BODY = b"ECHL" + bytes([PROTOCOL_VERSION])


class ProtocolError(ConnectionError):
    """The server sent something the protocol does not allow."""


class RefusedError(RuntimeError):
    """The server answered a request with ERROR; the connection stays usable."""


class Connection:
    """One connection to a server's learner socket.

    Construction connects, sends HELLO and reads the WELCOME. ``welcome``
    is its JSON; ``memfd`` and ``offer_fd`` are the descriptors that came
    with it (the ring and the offer page), owned by the caller (close them,
    or map them and then close them).

    A Connection is not safe for concurrent use: callers hold a lock
    around each ``request``. ``shutdown`` is the exception; any thread may
    call it to wake a reader blocked in ``request``, which then sees the
    end of the stream.
    """

    def __init__(self, socket_path: str, timeout: float | None = None):
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = bytearray()  # bytes read past the last frame returned
        self.memfd = -1
        self.offer_fd = -1
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(socket_path)
            self._send(HELLO, _HELLO_BODY)
            fds: list[int] = []
            kind, body = self._recv(fds)
            self.memfd, self.offer_fd = _two_fds(fds)
            if kind == ERROR:
                raise RefusedError(f"{socket_path} refused HELLO: {_text(body)}")
            if kind != WELCOME:
                raise ProtocolError(f"{socket_path} answered HELLO with {_name(kind)}")
            self.welcome: dict[str, Any] = json.loads(body)
            if self.welcome.get("protocol") != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"{socket_path} speaks learner protocol "
                    f"{self.welcome.get('protocol')!r}; this package speaks {PROTOCOL_VERSION}"
                )
            if self.offer_fd < 0:
                raise ProtocolError(f"{socket_path} sent WELCOME without the memfds of the ring and the offer page")
            self._sock.settimeout(None)
        except BaseException:
            self.close()
            raise

    def request(self, kind: int, body: bytes | memoryview = b"") -> tuple[int, bytes]:
        """Send one request and return the answer's type and body.

        Raises:
            ConnectionError: the server ended the connection (it closed or
                died) before answering.
            RefusedError: the server answered ERROR.
        """
        self._send(kind, body)
        answer, reply = self._recv(None)
        if answer == ERROR:
            raise RefusedError(f"{self.socket_path} refused {_name(kind)}: {_text(reply)}")
        return answer, reply

    def take(self, ticket: int) -> None:
        """Send TAKE: this learner takes the offer of ``ticket``; no answer comes.

        Raises:
            ConnectionError: the server ended the connection.
        """
        self._sock.sendall(_TAKE.pack(_TAKE.size - 4, TAKE, ticket))

    def shutdown(self) -> None:
        """Wake any thread blocked on this connection; it sees end of stream."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket and the memfds, if still owned. Idempotent."""
        self._sock.close()
        self.close_fds()

    def close_fds(self) -> None:
        """Close the memfds, if still owned (once mapped, they are not needed)."""
        for name in ("memfd", "offer_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def _send(self, kind: int, body: bytes | memoryview) -> None:
        header = _HEADER.pack(len(body) + 1, kind)
        if len(body) < 4096:
            self._sock.sendall(header + bytes(body))
        else:
            self._sock.sendall(header)
            self._sock.sendall(body)

    def _recv(self, fds: list[int] | None) -> tuple[int, bytes]:
        self._fill(_HEADER.size, fds)
        length, kind = _HEADER.unpack_from(self._buf)
        if length < 1 or length - 1 > MAX_BODY_BYTES:
            raise ProtocolError(f"{self.socket_path} sent a frame of length {length}")
        end = _HEADER.size + length - 1
        self._fill(end, fds)
        body = bytes(self._buf[_HEADER.size : end])
        del self._buf[:end]
        return kind, body

    def _fill(self, n: int, fds: list[int] | None) -> None:
        """Read until the buffer holds n bytes; collect descriptors into fds if it is a list.

        One read takes what the socket holds, up to 64 KiB: a whole answer,
        most often, in one system call.
        """
        while len(self._buf) < n:
            want = max(n - len(self._buf), 1 << 16)
            if fds is None:
                chunk = self._sock.recv(want)
            else:
                chunk = self._recvmsg(n - len(self._buf), fds)
            if not chunk:
                raise ConnectionError(f"the echo server at {self.socket_path} closed the learner connection")
            self._buf += chunk

    def _recvmsg(self, n: int, fds: list[int]) -> bytes:
        # MSG_CMSG_CLOEXEC: a process this one spawns must not inherit the ring.
        data, ancdata, flags, _ = self._sock.recvmsg(n, socket.CMSG_SPACE(4 * 8), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            fds.clear()
            raise ProtocolError(f"{self.socket_path} sent more descriptors than expected")
        return data


def _two_fds(fds: list[int]) -> tuple[int, int]:
    """Keep the first two descriptors received, close any others; -1 for those missing."""
    for extra in fds[2:]:
        os.close(extra)
    fds = fds[:2] + [-1] * (2 - len(fds[:2]))
    return fds[0], fds[1]


def _name(kind: int) -> str:
    return FRAME_NAMES.get(kind, f"frame type {kind}")


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
