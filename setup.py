"""Build the Cython hot paths (ring drain, stack dedup/interval lookup)."""

import os
import platform
import shlex
import subprocess

import Cython
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
           "-Wno-unreachable-code", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

extensions = [
    Extension("rsprof._ring", ["rsprof/_ring.pyx"], include_dirs=["csrc"],
              extra_compile_args=C_FLAGS),
    Extension("rsprof._unwind", ["rsprof/_unwind.pyx", "csrc/rsprof_cfi.c"],
              include_dirs=["csrc"], extra_compile_args=C_FLAGS),
    Extension("rsprof._dwarf", ["rsprof/_dwarf.pyx", "csrc/rsprof_dwarf.c"],
              include_dirs=["csrc"], extra_compile_args=C_FLAGS),
]

# The heap shim: a plain shared library (LD_PRELOAD), not a Python extension.
SHIM_NAME = "librsprof_shim.so"
SHIM_SOURCES = ["csrc/rsprof_shim.c", "csrc/rsprof_sampler.c", "csrc/rsprof_preload.c"]
SHIM_DEPENDS = [*SHIM_SOURCES, "csrc/rsprof_shim.h", "csrc/rsprof_shim_internal.h",
                "csrc/rsprof_sys.h", "csrc/rsprof_shm.h"]
SHIM_FLAGS = ["-shared", "-fPIC", "-O2", "-g", "-fno-omit-frame-pointer",
              "-fno-optimize-sibling-calls", "-fvisibility=hidden", "-Wall", "-Wextra",
              "-Werror", "-pthread",
              # Every PLT slot bound at load: a lazily bound call made first inside the
              # SIGPROF handler would run the dynamic linker's resolver on the program's
              # small alternate signal stack (csrc/rsprof_sys.h says why that kills it).
              "-Wl,-z,now", "-Wl,-z,relro"]


# What the extensions were built with, for `rsprof --version` (generated; in .gitignore).
BUILD_INFO = os.path.join("rsprof", "_build_info.py")


def _build_info_text() -> str:
    return ('"""Written by setup.py when it builds the extensions: what they were built '
            'with."""\n\n'
            f"CYTHON_VERSION = {Cython.__version__!r}\n"
            f"PYTHON_VERSION = {platform.python_version()!r}\n")


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path) as fh:
            if fh.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


class build_ext_with_shim(build_ext):
    """build_ext, plus rsprof/librsprof_shim.so and rsprof/_build_info.py (in build_lib,
    and in place for -e)."""

    def run(self) -> None:
        super().run()
        out = os.path.join(self.build_lib, "rsprof", SHIM_NAME)
        self._build_shim(out)
        info = _build_info_text()
        _write_if_changed(os.path.join(self.build_lib, BUILD_INFO), info)
        if self.inplace:
            self.copy_file(out, os.path.join("rsprof", SHIM_NAME), level=self.verbose)
            _write_if_changed(BUILD_INFO, info)

    def _build_shim(self, out: str) -> None:
        if not self.force and os.path.exists(out) and all(
                os.path.getmtime(src) <= os.path.getmtime(out) for src in SHIM_DEPENDS):
            return
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = shlex.split(os.environ.get("CC", "gcc"))
        cmd = [*cc, *SHIM_FLAGS, "-Icsrc", "-o", out, *SHIM_SOURCES, "-ldl"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), os.path.join(self.build_lib, "rsprof", SHIM_NAME),
                os.path.join(self.build_lib, BUILD_INFO)]


setup(
    cmdclass={"build_ext": build_ext_with_shim},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
