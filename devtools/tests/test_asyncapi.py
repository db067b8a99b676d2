"""The committed AsyncAPI document is what `python -m tipsdev.asyncapi` generates now, and
it describes every subject the code defines (pure logic: no servers)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tipsdev import asyncapi
from tipsml import contract as C
from tipsml import subjects as S

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"


def test_committed_document_is_the_generated_one():
    assert COMMITTED.exists(), "docs/asyncapi.yaml missing: run `make asyncapi`"
    assert COMMITTED.read_text() == asyncapi.render(), (
        "docs/asyncapi.yaml differs from the contract: run `make asyncapi` and commit it")


def test_check_mode_flags_a_stale_document(tmp_path, capsys):
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(asyncapi.render().replace("tips.score", "tips.scored", 1))
    assert asyncapi.main(["--check", str(stale)]) == 1
    assert "tips.scored" in capsys.readouterr().out
    stale.write_text(asyncapi.render())
    assert asyncapi.main(["--check", str(stale)]) == 0


def _resolve(doc: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def test_every_ref_resolves_and_every_subject_is_there():
    doc = yaml.safe_load(COMMITTED.read_text())
    assert doc["asyncapi"].startswith("3.")

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                _resolve(doc, node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    addresses = {c["address"] for c in doc["channels"].values()}
    for ep in S.ENDPOINTS:
        assert ep.subject in addresses
        op = doc["operations"][ep.subject.replace(".", "_")]
        assert op["bindings"]["nats"]["queue"] == ep.queue_group
        assert op["reply"]["channel"]["$ref"].endswith("_reply")
    for spec in S.STREAMS.values():
        for subj in spec.subjects:
            if subj.startswith("bench.cell"):
                continue  # internal work queue of the bench workers
            assert any(a and (a == subj or a.startswith(subj.rstrip(">").rstrip(".")))
                       for a in addresses), subj


def test_error_codes_and_headers_are_documented():
    doc = yaml.safe_load(COMMITTED.read_text())
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorCode"]["enum"] == [c.value for c in C.ErrorCode]
    fb = doc["components"]["messages"]["Feedback"]["headers"]
    assert "Nats-Msg-Id" in fb["required"]
    err = doc["components"]["messages"]["ErrorReply"]["headers"]["properties"]
    assert {"Nats-Service-Error", "Nats-Service-Error-Code"} <= set(err)
    prio = schemas["Task"]["properties"]["priority"]
    assert "0..4" in prio["description"]
