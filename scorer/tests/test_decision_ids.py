"""Decision ids (scorer.scoring.DecisionIds): uuid4().hex's shape, never repeated, and a
forked child never hands out the ids its parent will (the buffer of random bytes is
dropped in the child at fork, not checked with a getpid() per decision)."""

from __future__ import annotations

import os

from scorer.scoring import DecisionIds


def test_ids_are_32_hex_digits_and_distinct():
    ids = DecisionIds()
    got = [ids() for _ in range(3000)]  # several refills of the 512-id buffer
    assert len(set(got)) == len(got)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in got)


def test_a_forked_child_draws_its_own():
    ids = DecisionIds()
    ids()  # the buffer is filled before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without pytest's teardown
        os.write(w, "".join(ids() for _ in range(3)).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    parent = "".join(ids() for _ in range(3))
    assert len(child) == 96 and child != parent
