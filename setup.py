"""Build the Cython hot paths (ring drain, stack dedup/interval lookup)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
           "-Wno-unreachable-code", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

extensions = [
    Extension("rsprof._ring", ["rsprof/_ring.pyx"], include_dirs=["csrc"],
              extra_compile_args=C_FLAGS),
    Extension("rsprof._unwind", ["rsprof/_unwind.pyx"], include_dirs=["csrc"],
              extra_compile_args=C_FLAGS),
    Extension("rsprof._dwarf", ["rsprof/_dwarf.pyx", "csrc/rsprof_dwarf.c"],
              include_dirs=["csrc"], extra_compile_args=C_FLAGS),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
