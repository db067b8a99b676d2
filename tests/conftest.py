"""Root of the cross-worker suites (faults, fuzz, deploy, service).

``tests`` is a package: helpers import as ``tests.chaoslib``, ``tests.deploylib``,
``tests.fuzz.fuzzlib``.
"""
