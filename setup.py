"""Declares the Cython extensions only: every ext/NAME.pyx builds as tether._native.NAME.

TETHER_DEBUG=1 builds with line tracing and invariant checks (the `TETHER_DEBUG`
compile-time constant). TETHER_EXT=a,b builds only those modules (for development).

Without a working C compiler the build installs none of the extensions and says so once
(as msgpack's setup.py does): tether then runs on its pure-Python twins (tether._reference)
and `tether.NATIVE` is False. The extensions compile in parallel, one job per CPU.
"""
import glob
import os
import shutil
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

DEBUG = os.environ.get("TETHER_DEBUG") == "1"
ONLY = {n for n in os.environ.get("TETHER_EXT", "").split(",") if n}
JOBS = os.cpu_count() or 1

# Cython finds a module's own .pxd by its dotted name (tether/_native/NAME.pxd) and ext/ is
# flat, so mirror ext/*.pxd into that layout under build/ and search it.
PXD_ROOT = os.path.join("build", "pxd")
os.makedirs(os.path.join(PXD_ROOT, "tether", "_native"), exist_ok=True)
for pxd in glob.glob("ext/*.pxd"):
    shutil.copy2(pxd, os.path.join(PXD_ROOT, "tether", "_native"))

# modules that link a C library
LIBRARIES = {"journal_io": ["z"]}

FALLBACK_WARNING = """
WARNING: tether's C extensions could not be compiled ({error}).
tether is installed without them and runs on its pure-Python twins (tether._reference):
everything works, several times slower. tether.NATIVE is False.
To get the compiled core, install a C compiler and the Python headers (Debian:
apt-get install gcc python3-dev zlib1g-dev) and reinstall, or install a binary wheel.
"""


class OptionalBuildExt(build_ext):
    """build_ext that builds every extension or none: a failed compile removes what was
    built and prints FALLBACK_WARNING once instead of failing the install."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = JOBS

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        for ext in self.extensions:   # all or none: a partial core is not a core
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []
        self.distribution.ext_modules = []
        text = " ".join(str(exc).split()) or type(exc).__name__
        error = text if len(text) <= 160 else text[:157] + "..."
        sys.stderr.write(FALLBACK_WARNING.format(error=error))
        sys.stderr.flush()


extensions = []
for path in sorted(glob.glob("ext/*.pyx")):
    name = os.path.splitext(os.path.basename(path))[0]
    if ONLY and name not in ONLY:
        continue
    extensions.append(
        Extension(
            f"tether._native.{name}",
            [path],
            libraries=LIBRARIES.get(name, []),
            define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
            extra_compile_args=["-O2"],
        )
    )

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["ext", PXD_ROOT],
        nthreads=JOBS,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "linetrace": DEBUG,
        },
        compile_time_env={"TETHER_DEBUG": DEBUG},
    ),
    cmdclass={"build_ext": OptionalBuildExt},
)
