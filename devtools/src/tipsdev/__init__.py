"""tipsdev — development tooling; no worker imports it.

Simulator (``sim``), off-policy evaluation (``ope``), promotion gate and model cards
(``gate``, ``cards``), the demo behind ``make run`` (``demo``), the embedded-stack
launcher behind ``make up`` and the test fixtures (``launcher``, ``cluster``,
``llmserver``, ``testing``) and the AsyncAPI generator (``asyncapi``).
"""
