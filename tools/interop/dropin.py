"""echo's documented usage, run against a module given by name.

    dropin.py [--module echo_go]

Imports the module as `echo` (`import echo_go as echo` by default; run it
with `--module echo` to check the script against echo itself) and goes
through what echo's documentation shows: in-process submit then sample,
TcpClient actors over TCP, dataset_iter(copy=True), close() waking a
blocked sample() with None, and SampleInfo moving. Prints "ok" and exits 0,
or fails with an assertion naming the step.
"""

import argparse
import importlib
import threading
import time

import numpy as np


def example():
    return {"obs": np.zeros(8, np.float32), "reward": np.zeros((), np.float32), "done": np.zeros((), np.uint8)}


def sample_of(i):
    return {
        "obs": np.full(8, i, np.float32),
        "reward": np.array(i * 0.5, np.float32),
        "done": np.array(i % 2, np.uint8),
    }


def in_process(echo):
    server = echo.Server(example(), batch_size=4)  # no transport: no start()
    for i in range(4):
        server.submit(sample_of(i))
    smp = server.sample()
    assert smp is not None, "in process: sample() returned None"
    assert smp.batch["obs"].shape == (4, 8), f"in process: obs shape {smp.batch['obs'].shape}"
    assert smp.batch["obs"][:, 0].tolist() == [0, 1, 2, 3], f"in process: obs {smp.batch['obs'][:, 0]}"
    assert smp.batch["reward"].tolist() == [0, 0.5, 1, 1.5], f"in process: reward {smp.batch['reward']}"
    assert smp.info.notify_count >= 1, f"in process: notify_count {smp.info.notify_count}"
    server.close()


def over_tcp(echo):
    server = echo.Server(example(), batch_size=8, transport=echo.TcpTransport(0))
    server.start()
    port = server.port
    for _ in range(100):
        if port:
            break
        time.sleep(0.01)
        port = server.port
    clients = [echo.TcpClient("127.0.0.1", port, example()) for _ in range(2)]
    for c, client in enumerate(clients):
        for i in range(8):
            client.send(sample_of(100 * c + i))
    seen = []
    infos = []
    for smp in server.dataset_iter(copy=True):
        seen.extend(smp.batch["obs"][:, 0].tolist())
        infos.append(smp.info)
        if len(seen) == 16:
            break
    for client in clients:
        client.wait()
        client.close()
    assert sorted(seen) == sorted([100 * c + i for c in range(2) for i in range(8)]), f"tcp: got {seen}"
    assert infos[-1].samples_inserted_total >= 16, f"tcp: info {infos[-1]}"
    assert infos[-1].notify_count >= infos[0].notify_count, "tcp: notify_count went back"
    assert isinstance(infos[-1].drain_round.count, int), "tcp: drain_round has no count"

    # close() wakes a blocked sample() with None.
    got = []
    t = threading.Thread(target=lambda: got.append(server.sample()))
    t.start()
    time.sleep(0.2)
    server.close()
    t.join(5)
    assert not t.is_alive(), "close: sample() still blocked"
    assert got == [None], f"close: sample() returned {got}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="echo_go")
    args = ap.parse_args()
    echo = importlib.import_module(args.module)
    in_process(echo)
    over_tcp(echo)
    print("ok")


if __name__ == "__main__":
    main()
