"""The optional C part of tipsml (``tipsml._hot``: the scorer's per-arm maths).

Everything else is in pyproject.toml. Where no C compiler is present the build goes on
without it (``optional=True``) and :mod:`tipsml.bandits` uses its numpy path.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tipsml._hot", ["src/tipsml/_hot.c"], optional=True,
                             extra_compile_args=["-O2", "-ffp-contract=off"])])
