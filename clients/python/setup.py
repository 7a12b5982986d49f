"""Builds the SDK: its descriptors first (build_descriptors.py), then the
usual setuptools wheel and sdist (pyproject.toml holds the metadata)."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_descriptors  # noqa: E402


class BuildPy(build_py):
    def run(self):
        build_descriptors.ensure()
        super().run()


class Sdist(sdist):
    def run(self):
        build_descriptors.ensure()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
