"""Every Redis key of the project, spelled once.

Per-user keys carry the user's **hash tag** ``{u}`` (:func:`utag`): on a Redis Cluster all
of one user's learning-loop keys share one slot, so every script touches one slot only.
Global-model shards, due-sets and the generator's per-user caches spread over the slots
by their own tags. Bytes per user and per decision: see README "Scale-out".

| key | type | written by | read by |
|---|---|---|---|
| ``tips:st:{u}:<policy>`` | hash arm → packed model | feedback consumer (Lua) | scorer |
| ``tips:pulls:{u}:<policy>`` | hash arm → count | scorer | scorer, stats |
| ``tips:dec:{u}:<decision>`` | hash, the decision record | scorer | feedback consumer |
| ``tips:evt:{u}:<event>`` | string, idempotency claim | feedback consumer | feedback consumer |
| ``tips:gen:{u}:<decision>`` | string, prompt version | generator | feedback consumer |
| ``tips:stg:{<policy>.<s>}`` | hash, global-model shard | feedback consumer | scorer |
| ``tips:pullsg:{<policy>.<s>}`` | hash, global pulls shard | scorer | scorer, stats |
| ``tips:gdone:{<policy>.<s>}:<decision>`` | marker, once per decision | feedback consumer | — |
| ``tips:due:{<s>}`` | zset, windows to close | scorer | feedback consumer sweeper |
| ``tips:hpids`` | hash, hp tag → update id | scorer | feedback consumer |
| ``tips:cand:<u>:<arm>:<version>:<model>`` | list, tip candidates | generator | generator |
| ``tips:genctx:<u>`` / ``tips:sig:<u>`` | generator caches | generator | generator |
| ``tips:gencombo:<u>`` / ``tips:genlock:<what>:<u>`` | generator caches | generator | generator |
| ``tips:exposures`` | stream, prompt-version exposures | generator | bench, dashboards |
| ``tips:pv:served`` | hash, prompt-version exposure counts | generator | bench, dashboards |
| ``tips:pv:st:{<s>}`` | hash ``arm\x1fversion`` → [n, Σr] (1) | feedback consumer | generator |
| ``tips:pv:done:{<s>}:<decision>`` | marker, once per decision | feedback consumer | — |
| ``bench:job:<id>`` / ``bench:lease:<cell>`` | bench job state | bench worker | bench worker |

(1) rewards per prompt version, read by the generator's version bandit.
"""

from __future__ import annotations

import hashlib
import os
import zlib

PREFIX = "tips:"
GLOBAL_SHARDS = int(os.environ.get("GLOBAL_SHARDS", "16"))
DUE_SHARDS = 16

# prefixes of the keys kept per user or per decision (what tipsml.migrate_keys moves)
ST, PULLS, DEC, EVT, GEN = "tips:st:", "tips:pulls:", "tips:dec:", "tips:evt:", "tips:gen:"
STG, PULLSG, GDONE, DUE = "tips:stg:", "tips:pullsg:", "tips:gdone:", "tips:due:"
HP_IDS_KEY = "tips:hpids"
EXPOSURES_STREAM = "tips:exposures"
PV_SERVED_KEY = "tips:pv:served"


def utag(user_id: str) -> str:
    """The user's hash tag ``{user}``. A user id holding a brace would break the tag (Redis
    hashes what lies between the first ``{`` and the next ``}``): then a digest of it is
    the tag and the id follows it."""
    if "{" in user_id or "}" in user_id:
        return "{~" + hashlib.sha1(user_id.encode()).hexdigest()[:20] + "~}" + user_id
    return "{" + user_id + "}"


def user_of_tag(tag: str) -> str:
    """Inverse of :func:`utag`."""
    if tag.startswith("{~") and tag[22:24] == "~}":
        return tag[24:]
    return tag[1:-1]


def state_key(policy: str, user_id: str, global_model: bool = False) -> str:
    # a global model lives under its own prefix, so no user id can ever name it (the name
    # is logical: its statistics live in GLOBAL_SHARDS shard keys, global_shard_key)
    return f"{STG}{policy}" if global_model else f"{ST}{utag(user_id)}:{policy}"


def pulls_key(policy: str, user_id: str, global_model: bool = False) -> str:
    return f"{PULLSG}{policy}" if global_model else f"{PULLS}{utag(user_id)}:{policy}"


def global_shard(decision_id: str) -> int:
    return zlib.crc32(decision_id.encode()) % GLOBAL_SHARDS


def global_shard_key(policy: str, shard: int) -> str:
    return f"{STG}{{{policy}.{shard}}}"


def global_pulls_key(policy: str, shard: int) -> str:
    return f"{PULLSG}{{{policy}.{shard}}}"


def global_marker_key(policy: str, shard: int, decision_id: str) -> str:
    return f"{GDONE}{{{policy}.{shard}}}:{decision_id}"


VERSION_SHARDS = 16


def version_shard(decision_id: str) -> int:
    return zlib.crc32(decision_id.encode()) % VERSION_SHARDS


def version_stat_key(shard: int) -> str:
    """Prompt-version reward statistics (hash ``arm\x1fversion`` → float64 [n, Σr]),
    sharded by decision id; the generator's version bandit reads them (tipsml.versions)."""
    return f"tips:pv:st:{{{shard}}}"


def version_marker_key(shard: int, decision_id: str) -> str:
    return f"tips:pv:done:{{{shard}}}:{decision_id}"


def decision_key(decision_id: str, user_id: str) -> str:
    return f"{DEC}{utag(user_id)}:{decision_id}"


def event_key(event_id: str, user_id: str) -> str:
    return f"{EVT}{utag(user_id)}:{event_id}"


def due_shard(decision_id: str) -> int:
    return zlib.crc32(decision_id.encode()) % DUE_SHARDS


def due_key(shard: int) -> str:
    return f"{DUE}{{{shard}}}"


def default_event_id(decision_id: str) -> str:
    """The event id of the default reward: one per decision, so it applies at most once."""
    return f"default:{decision_id}"


def generation_key(decision_id: str, user_id: str) -> str:
    """Written by the generator: which prompt version wrote the tip of this decision."""
    return f"{GEN}{utag(user_id)}:{decision_id}"


def hp_tag(update_id: str) -> str:
    """The short form of a hyper-parameter id kept in decision records (8 hex digits);
    ``tips:hpids`` maps it back for messages."""
    return f"{zlib.crc32(update_id.encode()):08x}"





# ------------------------------------------------------------------ generator's own keys

def cand_key(user_id: str, arm: str, version: str, model: str) -> str:
    """The generator's list of ready tip candidates for one (user, arm, version, model)."""
    return f"tips:cand:{user_id}:{arm}:{version}:{model}"


def ctx_key(user_id: str) -> str:
    return f"tips:genctx:{user_id}"


def sig_key(user_id: str) -> str:
    return f"tips:sig:{user_id}"


def combo_key(user_id: str) -> str:
    return f"tips:gencombo:{user_id}"


def lock_key(user_id: str, what: str = "signal") -> str:
    return f"tips:genlock:{what}:{user_id}"


# ------------------------------------------------------------------ bench worker's keys

def bench_job_key(job_id: str) -> str:
    return f"bench:job:{job_id}"


def bench_lease_key(cell_key: str) -> str:
    return f"bench:lease:{cell_key}"
