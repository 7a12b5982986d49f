"""The build steps pyproject.toml cannot declare: the Cython kernel and the gRPC stubs.

- `make build` runs `python setup.py build_ext --inplace` (the kernel beside
  core/kernel.pyx) and generates the stubs into proto/tally/v1 itself.
- `pip install .`, `pip wheel .` and `python -m build` compile the kernel
  into the wheel and generate the stubs (`tally.v1`) straight into the build
  directory, so an installed Tally needs neither a checkout nor a .pth file.

Without a compiler the build fails; a checkout without the built kernel
falls back to core/reference.py (the server says so at start).
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py

PROTO_ROOT = "proto"


class build_py_with_stubs(build_py):
    """build_py, then protoc over proto/tally/v1/*.proto into the build
    directory: the generated modules are build output, never tracked."""

    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install reads the stubs `make build` generated in proto/
        from grpc_tools import protoc

        protos = sorted(glob.glob(os.path.join(PROTO_ROOT, "tally", "v1", "*.proto")))
        out = self.build_lib
        arguments = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                     f"--grpc_python_out={out}", *protos]
        if protoc.main(arguments) != 0:
            raise SystemExit("protoc failed on " + " ".join(protos))


extensions = [
    Extension(
        "core.kernel",
        ["core/kernel.pyx"],
        extra_compile_args=["-O2"],
    ),
    # The leader's recording of changes (issue 17): keeps the format of
    # core/replication/changes.py.
    Extension(
        "core.replication.encoding",
        ["core/replication/encoding.pyx"],
        extra_compile_args=["-O2"],
    ),
    # Pay's hot path above the kernel (issue 20): it cimports the record
    # structs of core/kernel.pxd.
    Extension(
        "server.fastpay",
        ["server/fastpay.pyx"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    # core, server and bench keep their top-level names (README, "Installing"
    # says why); tally.v1 (the stubs) comes from proto/.
    packages=find_packages(include=["core", "core.*", "server", "server.*", "bench", "bench.*"])
    + find_namespace_packages(where=PROTO_ROOT, include=["tally", "tally.*"]),
    package_dir={"tally": os.path.join(PROTO_ROOT, "tally")},
    package_data={"core": ["kernel.pxd"], "tally.v1": ["*.proto"],
                  "server.console": ["templates/*.html", "static/*.css"]},
    exclude_package_data={"core": ["kernel.c"]},
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}, annotate=False),
    cmdclass={"build_py": build_py_with_stubs},
)
