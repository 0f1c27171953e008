"""Several learner processes on one server: each batch goes to exactly one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
from conftest import child_env, example, ids_of, sample_of, wait_for

import echo_go

# Attaches to the socket in argv[1], says so, then prints the ids of each
# batch it takes, until the server closes.
_LEARNER = textwrap.dedent(
    """
    import json, sys
    import echo_go
    learner = echo_go.attach(sys.argv[1])
    print(json.dumps({"attached": learner.spec["batch_size"]}), flush=True)
    for smp in learner.dataset_iter():
        print(json.dumps([int(v) for v in smp.batch["obs"][:, 0]]), flush=True)
    learner.close()
    """
)


def test_two_learner_processes_share_the_batches_exactly_once():
    batches, batch_size = 40, 4
    total = batches * batch_size
    server = echo_go.Server(example(), batch_size=batch_size, num_buffers=4)
    server.start()
    child = subprocess.Popen(
        [sys.executable, "-c", _LEARNER, server.learner_socket],
        stdout=subprocess.PIPE,
        env=child_env(),
        text=True,
    )
    mine: list[list[int]] = []
    theirs: list[list[int]] = []

    def take_here():
        for smp in server.dataset_iter():
            mine.append(ids_of(smp.batch))

    def read_theirs():
        for line in child.stdout:
            theirs.append(json.loads(line))

    try:
        assert json.loads(child.stdout.readline()) == {"attached": batch_size}
        threads = [threading.Thread(target=take_here), threading.Thread(target=read_theirs)]
        for t in threads:
            t.start()
        for i in range(total):
            server.submit(sample_of(i))
        done = wait_for(lambda: sum(map(len, mine + theirs)) >= total, timeout=30)
        server.close()
        child.wait(10)
        for t in threads:
            t.join(10)
        assert done, f"{sum(map(len, mine + theirs))} of {total} samples arrived"
    finally:
        server.close()
        child.kill()
        child.wait()
    got = [i for batch in mine + theirs for i in batch]
    assert sorted(got) == list(range(total))  # every sample, exactly once
    assert mine and theirs, "one learner got every batch"
    for batch in mine + theirs:  # whole batches, each in order
        assert batch == list(range(batch[0], batch[0] + batch_size))


def test_attached_learner_sees_the_servers_structure_and_port():
    ex = {"obs": np.zeros(3, np.float32), "aux": [np.zeros((), np.int32), None]}
    with echo_go.Server(ex, batch_size=2, transport=echo_go.TcpTransport(0)) as server:
        server.start()
        learner = echo_go.attach(server.learner_socket)
        assert learner.port == server.port
        server.submit({"obs": np.ones(3, np.float32), "aux": [np.array(5, np.int32), None]})
        server.submit({"obs": np.ones(3, np.float32), "aux": [np.array(6, np.int32), None]})
        batch = learner.sample().batch
        assert isinstance(batch["aux"], list) and batch["aux"][1] is None
        assert batch["aux"][0].tolist() == [5, 6]
        del batch
        learner.close()
        assert learner.sample() is None


def test_closing_an_attached_learner_wakes_its_sample():
    with echo_go.Server(example(), batch_size=2) as server:
        server.start()
        learner = echo_go.attach(server.learner_socket)
        got = []
        t = threading.Thread(target=lambda: got.append(learner.sample()))
        t.start()
        t.join(0.2)
        learner.close()
        t.join(5)
        assert not t.is_alive() and got == [None]
        # The server keeps serving its own learner.
        server.submit(sample_of(0))
        server.submit(sample_of(1))
        assert ids_of(server.sample().batch) == [0, 1]
