"""echo's Python API, served by the Go engine: ``import echo_go as echo``."""

from importlib.metadata import PackageNotFoundError, version

from echo_go.info import HistSnapshot, SampleInfo
from echo_go.learner import Learner, attach
from echo_go.server import Sample, Server, TcpTransport
from echo_go.tcp_client import ConnectionClosedError, TcpClient
from echo_go.trajectory_accumulator import TrajectoryAccumulator

try:
    __version__ = version("echo-go-engine")
except PackageNotFoundError:  # run from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "ConnectionClosedError",
    "HistSnapshot",
    "Learner",
    "Sample",
    "SampleInfo",
    "Server",
    "TcpClient",
    "TcpTransport",
    "TrajectoryAccumulator",
    "__version__",
    "attach",
]
