"""The build step: the echo-server binary that the package carries.

``build_py`` compiles ``tools/echo-server`` of the Go module one directory
up (``go build``, run from the module's root) into the package's
``_bin/``. Where there is no Go toolchain, or no Go module around this
directory (an sdist unpacked elsewhere), it takes a binary already placed
at ``echo_go/_bin/echo-server`` instead; with neither, the build fails and
says so. The wheel is tagged for this platform, since the binary is.

Everything else (metadata, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
MODULE_ROOT = HERE.parent
MODULE_PATH = "github.com/seed-a9ef92a1/echo"
BINARY = Path("echo_go", "_bin", "echo-server")


class BuildWithServer(build_py):
    """build_py, then the echo-server binary into the build's package dir."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / BINARY
        target.parent.mkdir(parents=True, exist_ok=True)
        go = _find_go()
        if go and _is_module_root(MODULE_ROOT):
            _go_build(go, target)
        elif (HERE / BINARY).is_file():
            why = "no Go toolchain on PATH" if not go else f"no Go module {MODULE_PATH} at {MODULE_ROOT}"
            print(f"echo-go-engine: {why}; using the prebuilt {HERE / BINARY}")
            shutil.copy2(HERE / BINARY, target)
        else:
            raise SystemExit(
                "echo-go-engine: cannot make the echo-server binary: "
                + (
                    "no Go toolchain (go) on PATH or in $GOROOT/bin"
                    if not go
                    else f"no Go module {MODULE_PATH} at {MODULE_ROOT}"
                )
                + f", and no prebuilt binary at {HERE / BINARY}. Install Go "
                "(1.26 or newer) and build from the repository's python/ directory, "
                "or place a built echo-server there."
            )
        target.chmod(0o755)


class BinaryDistribution(Distribution):
    """A distribution that is not pure: it installs into platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform (it carries a native binary), for any Python 3."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


def _find_go() -> str | None:
    goroot = os.environ.get("GOROOT")
    if goroot and (Path(goroot) / "bin" / "go").is_file():
        return str(Path(goroot) / "bin" / "go")
    return shutil.which("go")


def _is_module_root(path: Path) -> bool:
    go_mod = path / "go.mod"
    if not go_mod.is_file():
        return False
    first = go_mod.read_text(encoding="utf-8").splitlines()[:1]
    return first == [f"module {MODULE_PATH}"]


def _go_build(go: str, target: Path) -> None:
    # A static binary: the wheel must run on Linux hosts without this libc.
    env = dict(os.environ, CGO_ENABLED="0")
    cmd = [go, "build", "-trimpath", "-o", str(target.resolve()), "./tools/echo-server"]
    print(f"echo-go-engine: {' '.join(cmd)} (in {MODULE_ROOT})")
    result = subprocess.run(cmd, cwd=MODULE_ROOT, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"echo-go-engine: go build of ./tools/echo-server in {MODULE_ROOT} failed "
            f"(exit status {result.returncode}); its output is above"
        )


setup(
    cmdclass={"build_py": BuildWithServer, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
)
