"""Root of the cross-worker suites (faults, fuzz): makes ``chaoslib`` importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
