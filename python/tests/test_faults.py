"""What happens when processes die, and what close() leaves behind."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import child_env, example, open_fds, process_alive, sample_of, wait_for

import echo_go


def _outcome(server):
    """Call sample(); return ("none"|"error"|"batch", seconds taken)."""
    t0 = time.monotonic()
    try:
        got = server.sample()
        kind = "none" if got is None else "batch"
    except (ConnectionError, RuntimeError):
        kind = "error"
    return kind, time.monotonic() - t0


def test_killing_the_server_ends_a_blocked_sample_within_a_second():
    server = echo_go.Server(example(), batch_size=4)
    server.start()
    pid = server._engine.proc.pid
    result = []
    t = threading.Thread(target=lambda: result.append(_outcome(server)))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t.join(5)
    assert not t.is_alive(), "sample() still blocked after the server died"
    kind, _ = result[0]
    assert kind in ("none", "error")
    assert time.monotonic() - killed < 1.0
    # Later calls end promptly too, and close() still tidies up.
    kind, took = _outcome(server)
    assert kind in ("none", "error") and took < 1.0
    server.close()
    assert server.sample() is None


def test_the_server_shares_this_session_but_not_its_ctrl_c():
    """A process group of its own (the terminal's Ctrl-C reaches this process
    alone), in this process's session: where the kernel shares CPU time out
    by session, the server's time counts as this learner's."""
    with echo_go.Server(example(), batch_size=4) as server:
        server.start()
        pid = server._engine.proc.pid
        assert os.getpgid(pid) == pid != os.getpgrp()
        assert os.getsid(pid) == os.getsid(0)


def test_the_error_names_the_server():
    server = echo_go.Server(example(), batch_size=4)
    server.start()
    os.kill(server._engine.proc.pid, signal.SIGKILL)
    with pytest.raises(ConnectionError, match=r"echo-server \(pid \d+\)"):
        server.sample()
    server.close()


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import echo_go
    server = echo_go.Server({"x": np.zeros(2, np.float32)}, batch_size=2,
                            transport=echo_go.TcpTransport(0))
    server.start()
    print(json.dumps({"engine": server._engine.proc.pid}), flush=True)
    time.sleep(60)
    """
)


def test_the_server_exits_when_its_learner_dies():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, env=child_env(), text=True)
    try:
        engine = json.loads(child.stdout.readline())["engine"]
        assert process_alive(engine)
        child.kill()
        child.wait(5)
        assert wait_for(lambda: not process_alive(engine), timeout=5), "echo-server outlived its learner"
    finally:
        child.kill()
        child.wait()


def test_close_leaves_no_fds_threads_or_files():
    gc.collect()
    fds, threads = open_fds(), set(threading.enumerate())
    server = echo_go.Server(example(), batch_size=2, transport=echo_go.TcpTransport(0))
    server.start()
    directory = os.path.dirname(server.learner_socket)
    for i in range(4):
        server.submit(sample_of(i))
    for _ in range(2):
        smp = server.sample()
    server.reset_histograms()
    pid = server._engine.proc.pid
    del smp
    server.close()
    gc.collect()
    assert not process_alive(pid)
    assert not os.path.exists(directory)
    assert open_fds() == fds
    assert wait_for(lambda: set(threading.enumerate()) == threads, timeout=2)


def test_a_view_outlives_close():
    server = echo_go.Server(example(), batch_size=2)
    for i in range(2):
        server.submit(sample_of(i))
    batch = server.sample().batch
    server.close()
    assert batch["obs"][:, 0].tolist() == [0, 1]  # still mapped, not a crash


def test_a_bad_binary_fails_start_with_its_stderr(tmp_path, monkeypatch):
    fake = tmp_path / "echo-server"
    fake.write_text("#!/bin/sh\necho 'no spec for you' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ECHO_GO_SERVER", str(fake))
    server = echo_go.Server(example(), batch_size=2)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*no spec for you"):
        server.start()
    server.close()
