"""Builds the Cython kernel (core/kernel.pyx) in place.

`make build` runs `python setup.py build_ext --inplace`; without a compiler
the build fails and the core falls back to core/reference.py (the server says
so at start).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "core.kernel",
        ["core/kernel.pyx"],
        extra_compile_args=["-O2"],
    )
]

setup(
    name="tally",
    version="0.1.0",
    packages=["core", "server", "bench"],
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}, annotate=False),
)
