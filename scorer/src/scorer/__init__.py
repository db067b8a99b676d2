"""The scorer worker (tips.score / tips.stats / tips.reset)."""

import tipsml  # noqa: F401 - first: the compiled modules' finder (tipsml.compiled)
