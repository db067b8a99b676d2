"""Cross-worker suites; helpers import as ``tests.<module>``."""
