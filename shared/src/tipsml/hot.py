"""The optional C part of tipsml (``tipsml._hot``, shared/src/tipsml/_hot.c).

Built by shared/setup.py where a C compiler is present (``make setup``, the images'
``tipsml-wheel`` stage). It holds what the scorer does per decision and Python does
slowly: the arms' maths and the choice (:mod:`tipsml.bandits`), the features' rounding
for the decision log, and the NATS frame parser of the fast connection
(:mod:`tipsml.messaging.fastsub`). Every user keeps its Python path, with the same
results (tests hold the two to each other): ``lib`` is ``None`` where the C part is not
built, or with ``TIPSML_NO_C=1`` (the Python paths, e.g. to compare them).
"""

from __future__ import annotations

import os

try:
    from . import _hot as lib
except ImportError:  # pragma: no cover - built without a C compiler
    lib = None

if os.environ.get("TIPSML_NO_C", "") not in ("", "0"):
    lib = None
