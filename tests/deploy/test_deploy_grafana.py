"""The provisioned dashboards and scrape config, statically: generated from the script,
well-formed for Grafana, bound to the provisioned data source; promtool accepts the
Prometheus config. (Whether every query returns data: test_deploy_prometheus.py.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
EXPECTED = {"serving.json", "learning.json", "prompts.json", "bench.json", "reliability.json"}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  GRAFANA / "build_dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_five_dashboards_are_shipped():
    assert {p.name for p in BOARDS} == EXPECTED


def test_dashboard_json_is_up_to_date_with_the_script():
    rendered = load_builder().render()
    assert set(rendered) == EXPECTED
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, \
            f"{name} is stale: run .venv/bin/python deploy/grafana/build_dashboards.py"


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path):
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    ds_uid = ds["datasources"][0]["uid"]
    board = json.loads(path.read_text())
    assert board["uid"].startswith("tips-") and board["title"].startswith("Tips ML / ")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    n_queries = 0
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):  # no two panels on the same grid cell
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{path.name}: {p['title']} overlaps"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == ds_uid
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == ds_uid
            n_queries += 1
    assert n_queries >= 5


def test_dashboard_uids_are_unique():
    uids = [json.loads(p.read_text())["uid"] for p in BOARDS]
    assert len(uids) == len(set(uids))


def test_promtool_accepts_the_scrape_config():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus)")
    r = subprocess.run([promtool, "check", "config",
                        str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
