"""Runs echo's own Server with its TcpTransport, for the Go interop tests.

    server.py [--case C] --batch B --batches K [--close]

Prints {"port": P} once listening, then takes K batches, checks every row
by value (samples.check), and prints {"ids": [[client, seq], ...]}. With
--close it closes the server after the K batches, while clients may still
be sending. Failures exit non-zero.
"""

import argparse
import json
import sys

import echo
import samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="alltypes")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--batches", type=int, required=True)
    ap.add_argument("--close", action="store_true")
    args = ap.parse_args()
    example = samples.build(samples.load_case(args.case))

    server = echo.Server(example, args.batch, transport=echo.TcpTransport(0))
    port = samples.start(server)
    print(json.dumps({"port": port, "version": echo.__version__}), flush=True)

    ids = []
    for _ in range(args.batches):
        smp = server.sample()
        if smp is None:
            sys.exit("echo server shut down early")
        ids.extend(samples.check(example, smp.batch, args.batch))
    server.close()
    print(json.dumps({"ids": ids}), flush=True)


if __name__ == "__main__":
    main()
