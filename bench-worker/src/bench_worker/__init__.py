"""tip-bench: model × prompt × scenario experiments, judged under rubric tip-v1.

Modules: :mod:`.job` (the ``bench.run`` payload, validation, cells, model sizes),
:mod:`.runner` (one cell: generate + judge), :mod:`.judge` (LLM judge),
:mod:`.human` (export / apply / agreement), :mod:`.tracking` (MLflow),
:mod:`.leaderboard` (bootstrap CIs, paired comparison, chart), :mod:`.stats`,
:mod:`.store` (Redis job state), :mod:`.service` (the coordinator the worker wires).
"""
