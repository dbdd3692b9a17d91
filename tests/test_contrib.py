"""The shipped Prometheus rules and Grafana dashboard (contrib/) stay true to /metrics.

``promtool check rules`` (Debian's ``prometheus`` package, installed by
scripts/ensure-system-deps.sh) must accept the rules, and every metric that the rules or the
dashboard name must be one that pooltender's own ``/metrics`` exposes (scraped here from a
real app) or one of the documented exporters' (docs/observability.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from pooltender.flask import Pooltender
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "contrib" / "prometheus" / "pooltender.rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "pooltender-dashboard.json"

#: Server-side figures come from the standard exporters; these are their metric names
#: (mysqld_exporter's global status/variables collectors, postgres_exporter's defaults).
EXPORTER_METRICS = frozenset(
    {
        "mysql_global_status_threads_connected",
        "mysql_global_variables_max_connections",
        "pg_stat_activity_count",
        "pg_settings_max_connections",
    }
)
_METRIC = re.compile(r"\b((?:pooltender|mysql|pg)_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def rule_exprs() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def scraped_sample_names(tmp_path: Path) -> set[str]:
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'metrics.db'}"
    Pooltender(app, db, public=True)

    @app.get("/query")
    def query() -> dict[str, int]:
        return {"one": db.session.execute(text("SELECT 1")).scalar_one()}

    with app.test_client() as client:
        assert client.get("/query").status_code == 200
        body = client.get("/metrics").get_data(as_text=True)
    with app.app_context():
        db.engine.dispose()
    return {
        sample.name for family in text_string_to_metric_families(body) for sample in family.samples
    }


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (Debian package 'prometheus')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_named_metric_exists(tmp_path: Path) -> None:
    exposed = scraped_sample_names(tmp_path)
    assert "pooltender_pool_checkouts_total" in exposed  # the scrape itself worked
    named = set().union(*(metric_names(e) for e in rule_exprs() + dashboard_exprs()))
    ours = {name for name in named if name.startswith("pooltender_")}
    assert ours, "the rules and dashboard name pooltender metrics"
    assert sorted(ours - exposed) == []
    assert sorted(named - ours - EXPORTER_METRICS) == []


def test_dashboard_is_grafana_shaped() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"]
    assert document["title"]
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_metric_name_extraction_sees_every_name() -> None:
    expr = "sum(rate(pooltender_a_total[5m])) / mysql_b + pg_c{x='y'}"
    assert metric_names(expr) == {"pooltender_a_total", "mysql_b", "pg_c"}
