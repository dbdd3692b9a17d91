"""``pooltender kill-idle`` against real MariaDB and PostgreSQL: the dry run lists exactly the
idle connections of the chosen account; ``--apply`` kills only those, the others survive."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pooltender.cli import main
from pooltender.server.killer import kill_idle
from tests.pooltender.test_server import PASSWORD, ConnectionSet, connection_set

__all__ = ["connection_set"]


def test_dry_run_then_apply_kills_only_the_matching(connection_set: ConnectionSet) -> None:
    cs = connection_set
    runner = CliRunner()
    dry = runner.invoke(
        main,
        ["kill-idle", cs.admin, "--older-than", "1", "--user", cs.user_a, "--json"],
    )
    assert dry.exit_code == 0, dry.output
    data = json.loads(dry.output)
    assert data["applied"] is False
    assert sorted(c["id"] for c in data["candidates"]) == sorted(cs.ids["idle_a"])
    assert data["killed"] == []
    listed = {c.id for c in cs.snapshot().connections}
    assert set(cs.ids["idle_a"]) <= listed  # a dry run kills nothing

    with_trx = kill_idle(cs.admin, older_than=1, user=cs.user_a, include_idle_in_transaction=True)
    assert sorted(c.id for c in with_trx.candidates) == sorted(cs.ids["idle_a"] + cs.ids["iit_a"])
    assert kill_idle(cs.admin, older_than=3600, user=cs.user_a).candidates == ()
    on_host = kill_idle(cs.admin, older_than=1, user=cs.user_b, host="127.0.0.1")
    assert sorted(c.id for c in on_host.candidates) == sorted(cs.ids["idle_b"])
    assert kill_idle(cs.admin, older_than=1, user=cs.user_b, host="10.9.9.9").candidates == ()

    applied = runner.invoke(
        main,
        ["kill-idle", cs.admin, "--older-than", "1", "--user", cs.user_a, "--apply"],
    )
    assert applied.exit_code == 0, applied.output
    assert f"{len(cs.ids['idle_a'])} matched, {len(cs.ids['idle_a'])} killed" in applied.output
    for ident in cs.ids["idle_a"]:
        assert not cs.alive(ident), f"{ident} should have been killed"
    for ident in cs.ids["iit_a"] + cs.ids["idle_b"]:
        assert cs.alive(ident), f"{ident} should have survived"
    survivors = {c.id for c in cs.snapshot().only_users(cs.users).connections}
    assert survivors == set(cs.ids["iit_a"] + cs.ids["idle_b"] + cs.ids["busy_a"])
    assert PASSWORD not in applied.output


def test_never_kills_itself_or_system_threads(connection_set: ConnectionSet) -> None:
    cs = connection_set
    report = kill_idle(cs.admin, older_than=0, include_idle_in_transaction=True)
    assert report.skipped_self == 1
    assert all(c.kind == "client" and not c.is_self for c in report.candidates)
    assert all(c.state != "active" for c in report.candidates)
    if cs.backend == "postgresql":
        assert report.skipped_system > 0
