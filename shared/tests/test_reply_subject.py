"""tipsml.messaging.connection.reply_is_inbox and inbox_prefix_for: which reply subjects a worker
answers (pure logic)."""

import pytest

from tipsml.messaging.connection import inbox_prefix_for, reply_is_inbox


@pytest.mark.parametrize("reply", [
    "_INBOX.abc", "_INBOX.kR0W1v7Vx3Zt.1", "_INBOX_recommender.abc.def", "_INBOX_admin.x",
    "_INBOX_bench-cli.z",
])
def test_inboxes_are_answered(reply):
    assert reply_is_inbox(reply)


@pytest.mark.parametrize("reply", [
    None, "", "tips.reset", "tips.stats", "$JS.API.STREAM.PURGE.DECISIONS",
    "$JS.ACK.SIGNALS.generator-signals.1.2.3.4.5", "_INBOX", "_INBOX.", "_INBOX_.x",
    "_INBOXES.x", "_INBOX_x.>", "_INBOX.*", "bench.run", " _INBOX.x", "decisions.egreedy-v1",
])
def test_anything_else_is_refused(reply):
    assert not reply_is_inbox(reply)


def test_inbox_prefix_per_user():
    assert inbox_prefix_for("scorer") == "_INBOX_scorer"
    assert inbox_prefix_for(None) == "_INBOX"
    assert reply_is_inbox(inbox_prefix_for("recommender") + ".tok")
