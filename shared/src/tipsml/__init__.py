"""tipsml — the one library every tips worker imports.

Wire contract (``contract``), subjects and stream/consumer configs (``subjects``),
settings (``settings``), feature builders (``features``), bandit math (``bandits``),
Redis state store (``state``), metrics helpers (``metrics``), NATS helpers
(``natsutil``) and the embedded-stack launcher (``launcher``).
"""

__version__ = "0.1.0"
