"""The embedded-stack launcher: real servers come up on free ports and go away cleanly."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tipsdev.launcher import EmbeddedStack, redis_ping

pytestmark = pytest.mark.system


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_stack_starts_real_servers_and_stops_them():
    import nats

    with EmbeddedStack() as st:
        nc = await nats.connect(st.nats_url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None  # JetStream is enabled
        await nc.close()
        rport = st.procs["redis"].port
        assert redis_ping(rport)
        nport = st.procs["nats"].port
        workdir = st.workdir
    assert not _port_open(rport) and not _port_open(nport)
    assert not workdir.exists()


async def test_restart_keeps_jetstream_data_and_port():
    import nats

    with EmbeddedStack(redis=False) as st:
        nc = await nats.connect(st.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.a", b"1")
        await nc.close()
        st.restart("nats")
        nc = await nats.connect(st.nats_url)
        si = await nc.jetstream().stream_info("T")
        assert si.state.messages == 1
        await nc.close()


def test_cli_up_env_down(tmp_path):
    env = dict(os.environ, TIPS_RUN_DIR=str(tmp_path / "run"))
    py = sys.executable
    up = subprocess.run([py, "-m", "tipsdev.launcher", "up", "--servers-only"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "NATS_URL=nats://127.0.0.1:" in up.stdout
    state = json.loads((tmp_path / "run" / "stack.json").read_text())
    assert set(state["pids"]) == {"nats", "redis"}
    assert redis_ping(state["ports"]["redis"])
    assert state["workers"] == {}
    again = subprocess.run([py, "-m", "tipsdev.launcher", "up", "--servers-only"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already up" in again.stderr
    down = subprocess.run([py, "-m", "tipsdev.launcher", "down"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0
    assert not _port_open(state["ports"]["redis"]) and not _port_open(state["ports"]["nats"])


def _alive(pid: int) -> bool:
    from tipsdev.launcher import _alive as alive

    return alive(pid)


@pytest.mark.slow
async def test_cli_up_is_the_whole_service_status_and_down_stop_it(tmp_path):
    """`make up` (without the LLM here): servers + the four workers, detached; it returns
    only when tips.score answers; `status` shows them; `down` stops every process."""
    import nats

    from tipsml.messaging.connection import request_json

    env = dict(os.environ, TIPS_RUN_DIR=str(tmp_path / "run"))
    py = sys.executable
    def run(*a, t=240):
        return subprocess.run([py, "-m", "tipsdev.launcher", *a], env=env, capture_output=True,
                              text=True, timeout=t, check=False)

    up = run("up")
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((tmp_path / "run" / "stack.json").read_text())
        assert set(state["workers"]) == {"scorer", "generator", "feedback-consumer",
                                         "bench-worker"}
        pids = [w["pid"] for w in state["workers"].values()] + list(state["pids"].values())
        assert all(_alive(p) for p in pids)  # they outlived the `up` command
        for w in state["workers"].values():
            assert w["ready"]["metrics_port"] > 0 and (tmp_path / "run" / "logs").exists()
        nc = await nats.connect(state["env"]["NATS_URL"])
        try:
            r = await request_json(nc, "tips.score", {"user_id": "launcher-test"}, timeout=2)
            assert r["ok"] is True
            g = await request_json(nc, "tips.generate", {"user_id": "launcher-test"}, timeout=5)
            assert g["ok"] is True  # no LLM here: a fallback tip, but an answer
        finally:
            await nc.close()
        st = run("status", t=60)
        assert st.returncode == 0, st.stdout
        assert "tips.score probe: ok" in st.stdout
        for name in state["workers"]:
            assert f"{name}" in st.stdout
        assert "DEAD" not in st.stdout
    finally:
        down = run("down", t=120)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids)
    assert not _port_open(state["ports"]["nats"]) and not _port_open(state["ports"]["redis"])
    gone = run("status", t=60)
    assert gone.returncode == 3 and "no stack is up" in gone.stdout
