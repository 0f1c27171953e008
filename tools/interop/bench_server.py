"""echo's own server for tools/echo-bench: takes batches as fast as they
complete until stdin closes.

    bench_server.py --workload FILE

Prints {"port": P} once listening and, after stdin closes, {"batches": N}.
"""

import argparse
import json
import sys
import threading

import numpy as np

import echo
import samples


def example_of(workload):
    return {k: np.zeros(v["shape"], dtype=np.dtype(v["dtype"])) for k, v in workload["tree"].items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    args = ap.parse_args()
    with open(args.workload) as f:
        workload = json.load(f)
    server = echo.Server(example_of(workload), workload["batch_size"], transport=echo.TcpTransport(0))
    port = samples.start(server)
    print(json.dumps({"port": port, "version": echo.__version__}), flush=True)

    def stop_on_eof():
        sys.stdin.read()
        server.close()

    threading.Thread(target=stop_on_eof, daemon=True).start()
    batches = 0
    while server.sample() is not None:
        batches += 1
    print(json.dumps({"batches": batches}), flush=True)


if __name__ == "__main__":
    main()
