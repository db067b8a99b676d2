"""The messaging toolkit every worker is wired with (no worker writes these itself):

* :mod:`.connection` — connect, streams and durables (create or check), JSON
  request-reply, the reply-subject check, dead-letter publishing;
* :mod:`.endpoint` — a request-reply verb: parse → handler → typed reply → metrics, once;
* :mod:`.service` — the NATS Services API (``$SRV.PING/INFO/STATS``) the endpoints
  register with;
* :mod:`.pull` — the one JetStream pull-consumer loop with ``retry_or_dead_letter``;
* :mod:`.breaker` — the one circuit breaker;
* :mod:`.fastsub` — one hot request subscription on a connection that speaks the NATS
  protocol by hand (the scorer's ``tips.score``: about half nats-py's CPU per request);
* :mod:`.lifecycle` — the worker lifecycle (connect, serve, drain and close on SIGTERM
  within a deadline) and the entry point ``run_service``.

Import from the submodules (``from tipsml.messaging.endpoint import Endpoint``); this
package module imports nothing, so a light user (the LLM client's breaker) pays for
nothing else.
"""
