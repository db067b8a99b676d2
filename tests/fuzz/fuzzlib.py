"""Strategies, corpus and checks of the fuzz suite."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time

from hypothesis import strategies as st

CODES = {"invalid_request", "unknown_policy", "unknown_prompt_version", "not_found",
         "forbidden", "unavailable", "timeout", "internal"}
POLICIES = ["egreedy-v1", "egreedy-v2", "linucb", "thompson"]
PROFILE_NAMES = ["completion_rate", "dismiss_rate", "mean_dwell_ms", "preferred_hour",
                 "tip_volume"]
REACTIONS = ["completed", "accepted", "dismissed", "ignored"]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40" if os.environ.get("CHAOS_SHORT") == "1"
                              else "100"))  # hypothesis examples per property
NATS_MAX = 900_000  # stay under the server's 1 MiB max_payload (client-side refusal)

# ---------------------------------------------------------------- strategies
any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # + surrogates
big_ints = st.sampled_from([2**63, -2**63 - 1, 10**30, 10**400, -10**400])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), big_ints,
                    st.floats(allow_nan=True, allow_infinity=True), any_text)
json_any = st.recursive(scalars, lambda c: st.lists(c, max_size=4) |
                        st.dictionaries(any_text, c, max_size=4), max_leaves=12)
huge_str = st.integers(200, 70_000).map(lambda n: "é" * (n // 2) if n % 2 else "x" * n)
ids = st.one_of(st.text(min_size=1, max_size=24), st.sampled_from(["*global*", "a:b", "u*", " ",
                                                                   "\u0000", "👩‍💻"]),
                st.text(min_size=120, max_size=140))


def field(valid):
    """Mostly well-typed, sometimes any JSON, sometimes huge."""
    return st.one_of(valid, valid, valid, json_any, huge_str)


def with_unknown(base):
    return st.tuples(base, st.dictionaries(st.text(max_size=12), json_any, max_size=3)).map(
        lambda t: {**t[1], **t[0]} if isinstance(t[0], dict) else t[0])


task = st.fixed_dictionaries({}, optional={
    "id": field(st.one_of(st.integers(), st.text(max_size=10))),
    "title": field(st.text(max_size=600)), "due": field(st.text(max_size=70)),
    "priority": field(st.integers(-2, 6)), "overdue": field(st.booleans())})
context = st.fixed_dictionaries({}, optional={
    "hour_of_day": field(st.integers(-3, 27)), "day_of_week": field(st.integers(-2, 9)),
    "tasks": field(st.lists(task, max_size=110))})
profile = st.dictionaries(st.one_of(st.sampled_from(PROFILE_NAMES), st.text(max_size=70)),
                          st.one_of(scalars, st.floats(-1e308, 1e308)), max_size=70)
arm_name = st.one_of(st.sampled_from(["a", "b", "focus_block", "x" * 64, "x" * 65, ""]),
                     st.text(max_size=10))

score_req = with_unknown(st.fixed_dictionaries({"user_id": field(ids)}, optional={
    "policy": field(st.sampled_from(POLICIES + ["nope", ""])),
    "arms": field(st.lists(arm_name, max_size=40)),
    "context": field(context), "profile_features": field(st.one_of(st.none(), profile)),
    "request_id": field(ids)}))
stats_req = with_unknown(st.fixed_dictionaries({"user_id": field(ids)}, optional={
    "policy": field(st.sampled_from(POLICIES + ["nope"]))}))
generate_req = with_unknown(st.fixed_dictionaries({"user_id": field(ids)}, optional={
    "arm": field(arm_name), "context": field(context),
    "profile_features": field(st.one_of(st.none(), profile)),
    "prompt_version": field(st.sampled_from(["v1", "v2-mentor", "v3-few-shot", "v9", ""])),
    "model": field(st.sampled_from(["openai/smollm2-135m", "gpt-4", ""])),
    "decision_id": field(ids), "request_id": field(ids)}))
leaderboard_req = with_unknown(st.fixed_dictionaries({}, optional={
    "experiment": field(st.text(max_size=30)), "job_id": field(ids)}))


def feedback_req(decisions):
    """Half well-formed events on real decisions (rewards sometimes out of range, NaN, inf),
    half fuzzed field by field."""
    did = st.sampled_from([d for d, _ in decisions]) if decisions else ids
    uid = st.sampled_from([u for _, u in decisions]) if decisions else ids
    pair = st.sampled_from(decisions) if decisions else st.tuples(ids, ids)
    wellformed = st.tuples(pair, st.uuids(), st.one_of(
        st.sampled_from(REACTIONS).map(lambda r: {"reaction": r}),
        st.floats(0, 1).map(lambda r: {"reward": r}),
        st.sampled_from([-0.01, -1, 1.01, 2, 1e308, float("nan"), float("inf"),
                         float("-inf")]).map(lambda r: {"reward": r}))).map(
        lambda t: {"event_id": f"fz-{t[1]}", "decision_id": t[0][0], "user_id": t[0][1],
                   "ts": 0, **t[2]})
    return st.one_of(wellformed, _fuzzed_feedback(did, uid))


def _fuzzed_feedback(did, uid):
    return with_unknown(st.fixed_dictionaries({
        "event_id": field(st.uuids().map(lambda u: f"fz-{u}")),
        "decision_id": field(st.one_of(did, did, ids)),
        "user_id": field(st.one_of(uid, uid, ids))}, optional={
        "reaction": field(st.sampled_from(REACTIONS + ["liked", "", "COMPLETED"])),
        "reward": field(st.one_of(st.floats(-2, 3), st.sampled_from(
            [0, 1, -0.0, 1.0000001, -1e-9, float("nan"), float("inf")]))),
        "dwell_ms": field(st.floats(-10, 1e12)), "ts": field(st.floats(0, 2e9)),
        "prompt_version": field(st.text(max_size=70))}))


signal_req = with_unknown(st.fixed_dictionaries({"user_id": field(ids)}, optional={
    "kind": field(st.text(max_size=70)), "ts": field(st.floats(0, 2e9)),
    "payload": field(st.one_of(st.none(), st.dictionaries(st.text(max_size=12), json_any,
                                                          max_size=6)))}))


@st.composite
def encoded(draw, obj_strategy):
    """A payload as bytes: JSON (ASCII-escaped, raw UTF-8, or with invalid UTF-8 from lone
    surrogates), sometimes mangled (truncated, garbage inserted) or not an object at all."""
    kind = draw(st.sampled_from(["ascii", "utf8", "utf8", "mangle", "other"]))
    if kind == "other":
        return draw(st.one_of(st.binary(max_size=300), json_any.map(
            lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))))
    obj = draw(obj_strategy)
    text = json.dumps(obj, allow_nan=True, ensure_ascii=(kind == "ascii"))
    data = text.encode("utf-8", "surrogatepass")
    if kind == "mangle" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = draw(st.sampled_from([data[:i], data[:i] + b"\xff\x00{" + data[i:],
                                     data + b"garbage", b"\xef\xbb\xbf" + data]))
    return data


# a fixed corpus of known-nasty payloads, run on every request-reply subject
CORPUS: list[bytes] = [
    b"", b" ", b"null", b"true", b"0", b"-0", b'""', b"[]", b"{}", b"[{}]", b"{", b"}",
    b'{"user_id": "u"', b'{"user_id": "u",}', b"{'user_id': 'u'}", b"\xff\xfe\x00",
    b'\xef\xbb\xbf{"user_id": "bom"}', b'{"user_id": "nul\\u0000"}', b'{"user_id": "\\ud800"}',
    b'{"user_id": "a", "user_id": 5}', b'{"user_id": "dup", "user_id": "dup2"}',
    b'{"user_id": NaN}', b'{"user_id": "u", "context": {"hour_of_day": NaN}}',
    b'{"user_id": "u", "context": {"hour_of_day": Infinity}}',
    b'{"user_id": "u", "context": {"hour_of_day": 23.5}}',
    b'{"user_id": "u", "context": {"hour_of_day": 1e400}}',
    b'{"user_id": "u", "context": {"hour_of_day": "9"}}',
    b'{"user_id": "u", "context": {"hour_of_day": true}}',
    b'{"user_id": "u", "context": {"day_of_week": 7}}',
    b'{"user_id": "u", "context": {"tasks": {"title": "x"}}}',
    b'{"user_id": "u", "context": {"tasks": [null]}}',
    b'{"user_id": "u", "context": {"tasks": [{"priority": 1e400}]}}',
    b'{"user_id": "u", "context": {"tasks": [{"id": 1' + b"0" * 5000 + b'}]}}',
    b'{"user_id": "u", "profile_features": {"tip_volume": 1' + b"0" * 400 + b'}}',
    b'{"user_id": "u", "profile_features": {"completion_rate": 1e400}}',
    b'{"user_id": "u", "profile_features": {"mean_dwell_ms": -1e308}}',
    b'{"user_id": "u", "profile_features": {"preferred_hour": 1e300}}',
    b'{"user_id": "u", "profile_features": []}',
    b'{"user_id": "u", "arms": [' + b",".join(b'"a%d"' % i for i in range(33)) + b"]}",
    b'{"user_id": "u", "arms": ["a", "a"]}', b'{"user_id": "u", "arms": [""]}',
    b'{"user_id": "u", "arms": [1, 2]}', b'{"user_id": "u", "arms": null}',
    b'{"user_id": "u", "policy": null}', b'{"user_id": "u", "policy": ["linucb"]}',
    b'{"user_id": "u", "prompt_version": "../../etc/passwd"}',
    b'{"user_id": "u", "arm": "a b"}', b'{"user_id": "u", "model": "ollama/evil"}',
    b'{"user_id": "*global*"}', b'{"user_id": "' + "👩‍💻".encode() * 20 + b'"}',
    b'{"user_id": "u", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"user_id": "u", "x": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
    b'{"user_id": "' + b"x" * 65_600 + b'"}',
    b'{"user_id": "u", "pad": "' + b"x" * 65_400 + b'"}',
    b'{"user_id": "u", "pad": "' + b"x" * 800_000 + b'"}',
]


# ---------------------------------------------------------------- checks
def _no_constants(c):
    raise ValueError(f"non-standard JSON constant {c} in a reply")


def check_reply(data: bytes) -> dict:
    """The reply must be strict JSON (no NaN/Infinity), an object with a boolean ``ok``, and
    a failure must carry a declared code and a message."""
    rep = json.loads(data, parse_constant=_no_constants)
    assert isinstance(rep, dict), rep
    assert isinstance(rep.get("ok"), bool), rep
    if not rep["ok"]:
        err = rep.get("error")
        assert isinstance(err, dict) and err.get("code") in CODES, rep
        assert isinstance(err.get("message"), str), rep
    return rep


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_ok(subject: str, req, rep: dict) -> None:
    if subject == "tips.score":
        arms = req.get("arms") if isinstance(req, dict) else None
        assert isinstance(rep["decision_id"], str) and rep["decision_id"]
        assert 0 < rep["propensity"] <= 1, rep
        assert isinstance(rep["explored"], bool)
        if isinstance(arms, list) and arms:
            assert rep["arm"] in arms and set(rep["scores"]) == set(arms), rep
        assert all(_finite(v) for v in rep["scores"].values()), rep
        for s in rep["shadow"]:
            assert 0 < s["propensity"] <= 1, rep
    elif subject == "tips.generate":
        assert isinstance(rep["tip"], str) and rep["tip"].strip(), rep
        assert rep["source"] in ("cache", "llm", "fallback"), rep
        assert isinstance(rep["prompt_version"], str), rep
    elif subject in ("tips.stats",):
        assert isinstance(rep.get("arms"), dict), rep
    elif subject == "tips.reset":
        assert isinstance(rep.get("reset_policies"), list), rep


async def snapshot(r) -> dict[bytes, str]:
    # sweep leases (``…:lease``, held ~5 s by the default-reward sweeper every second) come
    # and go on their own: bookkeeping, not state a request could have changed
    keys = [k async for k in r.scan_iter(count=2000) if not k.endswith(b":lease")]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.dump(k)
    vals = await pipe.execute()
    return {k: hashlib.sha1(v).hexdigest() for k, v in zip(keys, vals) if v is not None}


async def settle(r, timeout: float = 3.0) -> dict:
    """Wait until background writes (decision records, bookkeeping) have stopped."""
    a = await snapshot(r)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.08)
        b = await snapshot(r)
        if a == b:
            return b
        a = b
    return a


def diff(a: dict, b: dict) -> list[str]:
    out = [f"+{k!r}" for k in b.keys() - a.keys()] + [f"-{k!r}" for k in a.keys() - b.keys()]
    out += [f"~{k!r}" for k in a.keys() & b.keys() if a[k] != b[k]]
    return out[:10]
