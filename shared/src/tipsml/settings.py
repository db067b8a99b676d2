"""Settings shared by every worker, read from environment variables (and ``.env``).

One idiom: each worker subclasses :class:`BaseServiceSettings` in its own
``settings.py`` with its own ``env_prefix`` (``SCORER_``, ``GENERATOR_``, ``FEEDBACK_``,
``BENCH_``). Every field of a worker's settings, the shared ones included, is then read
from two names, the prefixed one first:

* ``<PREFIX><FIELD>`` — e.g. ``SCORER_REDIS_TIMEOUT_S``, ``SCORER_METRICS_PORT``,
  ``FEEDBACK_DEFAULT_REWARD`` (a field already named after the worker keeps its name:
  ``generator_deadline_s`` is ``GENERATOR_DEADLINE_S``, ``feedback_batch`` is
  ``FEEDBACK_BATCH``);
* today's unprefixed name, as an alias — ``REDIS_TIMEOUT_S``, ``METRICS_PORT``,
  ``DEFAULT_REWARD``, so one ``NATS_URL`` / ``REDIS_URL`` still serves every process and no
  deployment has to change. A worker whose name was never unprefixed lists its real
  former name in :attr:`BaseServiceSettings.legacy_env` (``()``: none).

When both are set in the same place (process environment, or ``.env``), the prefixed
one wins; a process environment variable wins over ``.env`` as usual. Values are
validated at start: a bad one stops the worker with one clear line naming the variable
(:func:`describe_settings_error`) and exit status 2
(:func:`tipsml.messaging.lifecycle.run_service`).

Shared variables (unprefixed, or with the worker's prefix):

* ``NATS_URL`` (``nats://127.0.0.1:4222``): NATS server(s), comma separated;
* ``NATS_USER`` / ``NATS_PASSWORD`` (unset): credentials of this worker's NATS user;
* ``REDIS_URL`` (``redis://127.0.0.1:6379/0``): Redis holding bandit state and decisions;
* ``ARMS`` (``focus_block,break_reminder,task_breakdown,prioritize,plan_tomorrow``):
  default arm catalogue;
* ``DEFAULT_POLICY`` (``egreedy-pooled``): policy served when a request names none
  (egreedy-v1 before issue 15; the gate promoted egreedy-pooled over egreedy-v2);
* ``SHADOW_POLICIES`` (``egreedy-v2,linucb``): policies scored beside the live one, never
  served;
* ``GLOBAL_POLICIES`` (empty): policies keeping one global model instead of one per user;
* ``EPSILON`` (``0.1``): exploration rate of the egreedy policies;
* ``LINUCB_ALPHA`` (``0.5``): LinUCB exploration width;
* ``THOMPSON_V`` (``0.1``): posterior scale of linear Thompson sampling (0.3 before
  issue 15: explored too long, see bench/results/sim_sweep.md);
* ``THOMPSON_PROPENSITY`` (``exact``): Thompson's propensity: ``exact`` (quadrature of
  P(argmax)) or ``mc`` (``THOMPSON_SAMPLES`` draws; the former estimate, kept for
  comparison);
* ``THOMPSON_SAMPLES`` (``256``): Monte Carlo draws of ``THOMPSON_PROPENSITY=mc``;
* ``RIDGE_LAMBDA`` (``1.0``): ridge prior (A = λI) of every linear arm model (and of the
  shared model of the pooled policies);
* ``POOLED_LAMBDA`` (``50.0``): pooled policies: strength λ_p of the shared prior (a
  user's model is shrunk toward the population's with weight λ_p; bandits.py);
* ``POOLED_EPSILON`` (``0.03``): exploration rate of ``egreedy-pooled``;
* ``POOLED_ALPHA`` (``0.1``): LinUCB width of ``linucb-pooled``;
* ``POOLED_V`` (``0.1``): posterior scale of ``thompson-pooled``;
* ``REWARD_WINDOW_S`` (``86400``): how long a decision can still be rewarded;
* ``STATE_TTL_S`` (``7776000``, 90 days): a user's bandit state and pull counters expire
  this long after their last reward / decision (idle users cost no memory); ``0`` keeps
  them forever;
* ``GLOBAL_SHARDS`` (``16``): shard keys of each global model's statistics (same value in
  every process);
* ``GLOBAL_REFRESH_S`` (``1.0``): how stale a scorer's merged copy of a global model may
  be;
* ``STREAM_REPLICAS`` (``1``): JetStream replicas of every stream (``3`` on a 3-node NATS
  cluster);
* ``REDIS_CLUSTER`` (unset): ``1``: ``REDIS_URL`` names Redis Cluster nodes (or write
  ``redis-cluster://h1:p1,h2:p2``);
* ``METRICS_PORT`` (``0``, worker default): Prometheus HTTP port; 0 picks a free port, -1
  disables;
* ``METRICS_ADDR`` (``127.0.0.1``): address the metrics server binds (``0.0.0.0`` in
  containers);
* ``ADMIN_TOKEN`` (unset): when set, admin requests (``tips.reset``, ``bench.run``) must
  carry header ``Tips-Admin-Token`` with it (on top of the NATS permissions in deploy/);
  required when ``TIPS_ENV=production``;
* ``NATS_INBOX_PREFIX`` (``_INBOX_<NATS_USER>``, ``_INBOX`` without a user): prefix of
  this client's reply inboxes; deploy/nats/nats-server.conf lets each user subscribe to
  its own prefix only;
* ``NATS_TLS_CA`` (unset): CA file to verify the NATS server's certificate (TLS on the
  client port); required in production;
* ``NATS_PROVISION`` (``true`` in dev, ``false`` in production): create/update the streams
  and this worker's durables at start; off: only check that they exist
  (``python -m tipsml.provision`` creates them as admin);
* ``TIPS_ENV`` (``dev``): ``production``: refuse to start with an empty or placeholder
  (``change-me…``) secret, without ``ADMIN_TOKEN``, without TLS to NATS;
* ``SHUTDOWN_TIMEOUT_S`` (``8``): SIGTERM → stop, finish the work in hand, close: within
  it.
"""

from __future__ import annotations

import copy
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[list[str], NoDecode]  # ``a,b,c`` (or a JSON list) in the environment

PLACEHOLDER_PREFIX = "change-me"
MIN_SECRET_LEN = 16


class InsecureSettingsError(ValueError):
    """A production worker was configured with a missing, empty or placeholder secret."""


def secret_problem(name: str, value: str | None) -> str | None:
    """Why ``value`` is not acceptable as the production secret ``name`` (None: it is)."""
    if not value:
        return f"{name} is empty or unset"
    if value.lower().startswith(PLACEHOLDER_PREFIX):
        return f"{name} is still the placeholder from .env.example ({value[:9]}…)"
    if len(value) < MIN_SECRET_LEN:
        return f"{name} is shorter than {MIN_SECRET_LEN} characters"
    return None


DEFAULT_ARMS = ("focus_block", "break_reminder", "task_breakdown", "prioritize", "plan_tomorrow")


def _split(v):
    """Comma list (``a,b``) or JSON list (``["a","b"]``) from the environment."""
    if v is None:
        return []
    if isinstance(v, str) and v.strip().startswith("["):
        import json

        return [str(x) for x in json.loads(v)]
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return list(v)


class SettingsError(ValueError):
    """A setting that cannot be used (raised by validators; reported at start)."""


SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "KEY", "URL")


def describe_settings_error(e: Exception) -> str:
    """One line for a settings failure: ``VARIABLE=value: why`` per bad value (secrets and
    URLs, which may carry a password, are not echoed)."""
    if not isinstance(e, ValidationError):
        return str(e)
    parts = []
    for err in e.errors():
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if not loc:
            parts.append(msg)
            continue
        name = loc.upper()
        shown = "" if any(w in name for w in SECRET_WORDS) else f"={err.get('input')!r}"
        parts.append(f"{name}{shown}: {msg}")
    return "; ".join(parts)


def env_names(name: str, prefix: str, legacy: tuple[str, ...] | None = None) -> list[str]:
    """The environment names of field ``name`` under ``prefix``: the prefixed one first,
    then the legacy (unprefixed) ones."""
    n = name.upper()
    p = prefix.upper()
    prefixed = n if not p or n.startswith(p) else p + n
    return list(dict.fromkeys([prefixed, *((n,) if legacy is None else legacy)]))


class BaseServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore",
                                      populate_by_name=True)
    # field -> its former environment names, where they are not simply the field's
    # name in upper case (``()``: it had only the prefixed name)
    legacy_env: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kw):
        """A subclass with an ``env_prefix`` reads every field from ``<PREFIX><FIELD>``
        first, then from the legacy unprefixed name (see the module doc)."""
        super().__pydantic_init_subclass__(**kw)
        prefix = cls.model_config.get("env_prefix") or ""
        if not prefix:
            return
        fields = cls.__pydantic_fields__
        for name, f in list(fields.items()):
            nf = copy.copy(f)  # the parent's FieldInfo stays as it was
            nf.validation_alias = AliasChoices(*env_names(name, prefix,
                                                          cls.legacy_env.get(name)))
            fields[name] = nf
        cls.model_rebuild(force=True)

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    arms: CsvList = Field(default_factory=lambda: list(DEFAULT_ARMS))
    default_policy: str = "egreedy-pooled"
    shadow_policies: CsvList = Field(default_factory=lambda: ["egreedy-v2", "linucb"])
    global_policies: CsvList = Field(default_factory=list)
    epsilon: float = 0.1
    linucb_alpha: float = 0.5
    thompson_v: float = 0.1
    thompson_samples: int = 256
    thompson_propensity: str = "exact"
    ridge_lambda: float = 1.0
    pooled_lambda: float = 50.0
    pooled_epsilon: float = 0.03
    pooled_alpha: float = 0.1
    pooled_v: float = 0.1
    reward_window_s: int = 86400
    # a decision record (and its due entry) outlives its window by this much, so the
    # default reward still finds it after the sweeping consumer was down for a while
    reward_record_grace_s: float = 3600.0
    state_ttl_s: int = 90 * 86400
    global_refresh_s: float = 1.0
    stream_replicas: int = 1
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    admin_token: str | None = None
    log_level: str = "INFO"
    nats_inbox_prefix: str | None = None
    nats_tls_ca: str | None = None
    nats_provision: bool | None = None
    tips_env: str = "dev"
    # SIGTERM -> stop taking work, finish what is in hand, close: all within this
    # (under the 10 s compose and Kubernetes give before SIGKILL)
    shutdown_timeout_s: float = Field(default=8.0, gt=0)

    @field_validator("arms", "shadow_policies", "global_policies", mode="before")
    @classmethod
    def _csv(cls, v):
        return _split(v)

    @field_validator("thompson_propensity")
    @classmethod
    def _tprop(cls, v: str) -> str:
        if v not in ("exact", "mc"):
            raise ValueError("THOMPSON_PROPENSITY must be exact or mc")
        return v

    @field_validator("epsilon", "pooled_epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("EPSILON must be in [0, 1]")
        return v

    @property
    def production(self) -> bool:
        return self.tips_env.strip().lower() in ("production", "prod")

    @property
    def provision(self) -> bool:
        """Whether this worker creates/updates streams and its durables itself."""
        return (not self.production) if self.nats_provision is None else self.nats_provision

    @property
    def inbox_prefix(self) -> str:
        if self.nats_inbox_prefix:
            return self.nats_inbox_prefix
        from .messaging.connection import inbox_prefix_for

        return inbox_prefix_for(self.nats_user)

    def production_problems(self) -> list[str]:
        """Everything that makes these settings unfit for production (empty: fit)."""
        out = [p for p in (secret_problem("NATS_PASSWORD", self.nats_password),
                           secret_problem("ADMIN_TOKEN", self.admin_token)) if p]
        if not self.nats_user:
            out.append("NATS_USER is unset")
        redis_pw = urlsplit(self.redis_url).password
        p = secret_problem("the password in REDIS_URL", redis_pw)
        if p:
            out.append(p)
        if not (self.nats_tls_ca or all(u.strip().startswith("tls://")
                                        for u in self.nats_url.split(",") if u.strip())):
            out.append("NATS_TLS_CA is unset (TLS to NATS is required)")
        return out

    @model_validator(mode="after")
    def _production_secrets(self):
        if self.production:
            problems = self.production_problems()
            if problems:
                raise InsecureSettingsError(
                    "refusing to start with TIPS_ENV=production: " + "; ".join(problems))
        return self

    def nats_connect_kwargs(self) -> dict:
        kw: dict = {"servers": [s.strip() for s in self.nats_url.split(",") if s.strip()],
                    "inbox_prefix": self.inbox_prefix}
        if self.nats_user:
            kw["user"] = self.nats_user
            kw["password"] = self.nats_password or ""
        if self.nats_tls_ca:
            import ssl

            kw["tls"] = ssl.create_default_context(cafile=self.nats_tls_ca)
        return kw
