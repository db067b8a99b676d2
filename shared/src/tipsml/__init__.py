"""tipsml — what two or more tips workers use.

Wire contract (``contract``), subjects and stream/consumer configs (``subjects``),
settings base (``settings``), every Redis key (``keys``), feature builders
(``features``), bandit maths (``bandits``), Redis state store and its Lua (``state``),
rewards (``rewards``), prompt registry and context (``prompts``, ``context``), LLM access
with its guard and fallbacks (``llm``, ``guard``, ``fallbacks``, ``rubric``), metrics
helpers (``metrics``), the messaging toolkit (``messaging``: connection, endpoint helper,
Services API, pull loop, breaker, worker lifecycle), the Python client (``client``) and
the operator commands (``provision``, ``migrate_keys``).

Each worker's own logic lives in its package (``scorer``, ``generator``,
``feedback_consumer``, ``bench_worker``); development tooling in ``tipsdev``.
"""

__version__ = "0.1.0"
