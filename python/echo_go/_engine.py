"""The echo-server process behind a Server.

``Engine`` starts the ``echo-server`` binary that this package carries
(docs/learner.md, "The standalone server"), waits for the line of JSON it
prints once listening, and ends it: politely with ``CLOSE``, or with
signals when it does not answer.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

from echo_go import _frames

_log = logging.getLogger("echo_go.server")

# Names a binary to run instead of the one this package carries (for
# development of the Go side; the tests honour it too).
BINARY_ENV = "ECHO_GO_SERVER"

START_TIMEOUT_S = 30.0

# Popen's arguments for a child in a process group of its own (Python 3.11
# has process_group; before it, setpgid in the child).
_OWN_PROCESS_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)
EXIT_TIMEOUT_S = 10.0


def server_binary() -> str:
    """Return the path of the echo-server binary to run.

    Raises:
        RuntimeError: the binary is missing or not executable.
    """
    path = os.environ.get(BINARY_ENV) or os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "echo-server")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"echo-server binary not found or not executable at {path}; "
            "reinstall echo-go-engine (its build compiles the binary with Go), "
            f"or set {BINARY_ENV} to the path of one"
        )
    return path


class Engine:
    """One running echo-server, its scratch directory and its stderr.

    Args:
        spec_tree: the example's description for ``--spec``.
        tcp: the address actors connect to (``host:port``), or None.
        options: further flags, as ``{"num-buffers": 3, ...}``.

    Raises:
        RuntimeError: the binary is missing, or the server exited (or said
            nothing) before listening; the message carries its stderr.
    """

    def __init__(self, spec_tree: Any, batch_size: int, tcp: str | None, options: dict[str, int]):
        binary = server_binary()
        self.dir = tempfile.mkdtemp(prefix="echo-go-")
        self.learner_socket = os.path.join(self.dir, "learner.sock")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: _StderrPump | None = None
        try:
            spec_path = os.path.join(self.dir, "spec.json")
            with open(spec_path, "w", encoding="utf-8") as f:
                json.dump(spec_tree, f)
            args = [
                binary,
                "--spec",
                spec_path,
                "--batch-size",
                str(batch_size),
                "--learner-socket",
                self.learner_socket,
                "--parent-pid",
                str(os.getpid()),
            ]
            if tcp is not None:
                args += ["--tcp", tcp]
            for flag, value in options.items():
                args += [f"--{flag}", str(value)]
            # A process group of its own: a Ctrl-C meant for this process
            # must not close the server under it. It exits when this process
            # does (--parent-pid), or on CLOSE. Not a session of its own:
            # where the kernel groups CPU time by session (autogroup), the
            # server must share this learner's, as echo's threads do, and not
            # take a session's share of every core for itself.
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **_OWN_PROCESS_GROUP,
            )
            self._stderr = _StderrPump(self.proc.stderr, self.proc.pid)
            ready = self._read_ready_line(START_TIMEOUT_S)
            self.learner_socket = ready.get("learner_socket", self.learner_socket)
            self.port = int(ready.get("port", 0))
        except BaseException:
            self.kill()
            raise

    def describe(self, wait: float = 0.0) -> str:
        """Say how the process stands, for error messages.

        ``wait`` gives a process that is ending that long to finish.
        """
        if self.proc is None:
            return "echo-server (not started)"
        try:
            code = self.proc.wait(wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            state = "is running"
        elif code < 0:
            state = f"was killed by {signal.Signals(-code).name}"
        else:
            state = f"exited with status {code}"
        return f"echo-server (pid {self.proc.pid}) {state}"

    def close(self, timeout: float = EXIT_TIMEOUT_S) -> None:
        """Close the server with CLOSE and wait for it to exit; kill it if it does not."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                conn = _frames.Connection(self.learner_socket, timeout=timeout)
                try:
                    conn.request(_frames.CLOSE)
                finally:
                    conn.close()
            except (OSError, RuntimeError) as e:
                _log.debug("CLOSE to %s failed: %s", self.learner_socket, e)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("%s did not exit %.0f s after CLOSE; terminating it", self.describe(), timeout)
        self.kill()

    def kill(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and remove its files. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.join()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read_ready_line(self, timeout: float) -> dict[str, Any]:
        """Read the one line of JSON the server prints once listening."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(
                    f"{self.describe()} printed no ready line within {timeout:.0f} s" + self._stderr_tail()
                )
            chunk = os.read(fd, 4096)
            if not chunk:
                try:
                    self.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
                raise RuntimeError(f"{self.describe()} before listening" + self._stderr_tail())
            line += chunk
        try:
            return json.loads(line)
        except ValueError as e:
            raise RuntimeError(f"{self.describe()} printed {line!r}, not JSON") from e

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        if self.proc is not None and self.proc.poll() is not None:
            self._stderr.join()
        tail = self._stderr.tail()
        return ("; its stderr ends:\n" + "\n".join(tail)) if tail else "; it wrote nothing on stderr"


class _StderrPump:
    """Reads the server's stderr into logging, keeping the last lines for errors.

    Lines that name their level (``level=INFO``, as Go's slog writes it)
    are logged at it; any other line (a panic, say) at WARNING.
    """

    def __init__(self, stream: IO[bytes] | None, pid: int):
        self._lines: collections.deque[str] = collections.deque(maxlen=20)
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name=f"echo-server {pid} stderr", daemon=True)
        self._thread.start()

    def tail(self) -> list[str]:
        return list(self._lines)

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive() and self._stream is not None:
            self._stream.close()
            self._stream = None

    def _run(self) -> None:
        assert self._stream is not None
        for raw in self._stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._lines.append(line)
            _log.log(_level_of(line), "echo-server: %s", line)


def _level_of(line: str) -> int:
    for name, level in (("DEBUG", logging.DEBUG), ("INFO", logging.INFO), ("ERROR", logging.ERROR)):
        if f"level={name}" in line:
            return level
    return logging.WARNING
