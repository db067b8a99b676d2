"""The embedded-stack launcher: real servers come up on free ports and go away cleanly."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tipsml.launcher import EmbeddedStack, redis_ping

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
    up = subprocess.run([py, "-m", "tipsml.launcher", "up"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "NATS_URL=nats://127.0.0.1:" in up.stdout
    state = json.loads((tmp_path / "run" / "stack.json").read_text())
    assert set(state["pids"]) == {"nats", "redis"}
    assert redis_ping(state["ports"]["redis"])
    again = subprocess.run([py, "-m", "tipsml.launcher", "up"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and "already up" in again.stderr
    down = subprocess.run([py, "-m", "tipsml.launcher", "down"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0
    assert not _port_open(state["ports"]["redis"]) and not _port_open(state["ports"]["nats"])
