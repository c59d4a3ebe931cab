"""Declares the Cython extensions only: every ext/NAME.pyx builds as tether._native.NAME.

TETHER_DEBUG=1 builds with line tracing and invariant checks (the `TETHER_DEBUG`
compile-time constant). TETHER_EXT=a,b builds only those modules (for development).
"""
import glob
import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("TETHER_DEBUG") == "1"
ONLY = {n for n in os.environ.get("TETHER_EXT", "").split(",") if n}

# Cython finds a module's own .pxd by its dotted name (tether/_native/NAME.pxd) and ext/ is
# flat, so mirror ext/*.pxd into that layout under build/ and search it.
PXD_ROOT = os.path.join("build", "pxd")
os.makedirs(os.path.join(PXD_ROOT, "tether", "_native"), exist_ok=True)
for pxd in glob.glob("ext/*.pxd"):
    shutil.copy2(pxd, os.path.join(PXD_ROOT, "tether", "_native"))

# modules that link a C library
LIBRARIES = {"journal_io": ["z"]}

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
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "linetrace": DEBUG,
        },
        compile_time_env={"TETHER_DEBUG": DEBUG},
    ),
)
