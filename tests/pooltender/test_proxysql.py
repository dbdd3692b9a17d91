"""``pooltender proxysql-config``: the generated proxysql.cnf parsed by a strict parser of
libconfig (ProxySQL's configuration syntax; ProxySQL itself cannot be installed here), its
figures checked against the budget, and the multiplexing breakers.

The parser follows libconfig's grammar (libconfig manual, "Configuration File Grammar")::

    configuration = setting-list | empty
    setting       = name (":" | "=") value (";" | "," | empty)
    value         = scalar-value | array | list | group
    array = "[" scalar-value-list? "]"   list = "(" value-list? ")"   group = "{" setting-list? "}"
    name [A-Za-z*][-A-Za-z0-9_*]*   string \"([^\"\\]|\\.)*\"   integer [-+]?[0-9]+
    comments: # ..., // ..., /* ... */
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pooltender.budget import ConnectionBudget, FleetShape, ProxyShape, WorkerModel
from pooltender.cli import main
from pooltender.proxysql import (
    Backend,
    ProxySQLConfigError,
    multiplexing_breaker,
    proxysql_config,
)
from pooltender.server.limits import ServerLimits
from pooltender.settings import PoolSettings

# ------------------------------------------------------------- a libconfig parser

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<float>[-+]?(?:[0-9]*\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+))
  | (?P<hex>0[Xx][0-9A-Fa-f]+L{0,2})
  | (?P<integer>[-+]?[0-9]+L{0,2})
  | (?P<boolean>(?i:true|false)(?![-A-Za-z0-9_*]))
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<punct>[=:;,\[\](){}])
    """,
    re.VERBOSE | re.DOTALL,
)


class LibconfigError(ValueError):
    pass


def tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise LibconfigError(f"line {line}: unexpected {text[pos : pos + 10]!r}")
        kind = match.lastgroup or ""
        if kind not in ("ws", "comment"):
            tokens.append((kind, match.group(), text.count("\n", 0, pos) + 1))
        pos = match.end()
    return tokens


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, *values: str) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise LibconfigError(f"unexpected end of file, expected {' or '.join(values)}")
        if values and token[1] not in values:
            raise LibconfigError(
                f"line {token[2]}: expected {' or '.join(values)}, got {token[1]!r}"
            )
        self.i += 1
        return token

    def configuration(self) -> dict[str, Any]:
        settings = self.setting_list(end=None)
        if self.peek() is not None:
            raise LibconfigError(f"line {self.peek()[2]}: trailing {self.peek()[1]!r}")  # type: ignore[index]
        return settings

    def setting_list(self, end: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (token := self.peek()) is not None and token[1] != end:
            kind, name, line = self.take()
            if kind != "name":
                raise LibconfigError(f"line {line}: expected a setting name, got {name!r}")
            if name in out:
                raise LibconfigError(f"line {line}: duplicate setting {name!r}")
            self.take("=", ":")
            out[name] = self.value()
            if (nxt := self.peek()) is not None and nxt[1] in (";", ","):
                self.take()
        return out

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            raise LibconfigError("unexpected end of file, expected a value")
        text = token[1]
        if text == "{":
            self.take("{")
            group = self.setting_list(end="}")
            self.take("}")
            return group
        if text == "(":
            return self.sequence("(", ")", scalars_only=False)
        if text == "[":
            return self.sequence("[", "]", scalars_only=True)
        return self.scalar()

    def sequence(self, start: str, end: str, *, scalars_only: bool) -> list[Any]:
        self.take(start)
        items: list[Any] = []
        while (token := self.peek()) is not None and token[1] != end:
            items.append(self.scalar() if scalars_only else self.value())
            if (nxt := self.peek()) is not None and nxt[1] == ",":
                self.take(",")
            elif (nxt := self.peek()) is not None and nxt[1] != end:
                raise LibconfigError(f"line {nxt[2]}: expected , or {end}, got {nxt[1]!r}")
        self.take(end)
        return items

    def scalar(self) -> Any:
        kind, text, line = self.take()
        if kind == "string":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind == "integer":
            return int(text.rstrip("L"))
        if kind == "hex":
            return int(text.rstrip("L"), 16)
        if kind == "float":
            return float(text)
        if kind == "boolean":
            return text.lower() == "true"
        raise LibconfigError(f"line {line}: expected a value, got {text!r}")


def parse_libconfig(text: str) -> dict[str, Any]:
    return Parser(text).configuration()


# ProxySQL's documented columns / variables (ProxySQL docs: main runtime tables and
# global variables); an unknown key in the generated file is a defect.
SERVER_COLUMNS = {
    "address",
    "port",
    "hostgroup",
    "hostgroup_id",
    "gtid_port",
    "status",
    "weight",
    "compression",
    "max_connections",
    "max_replication_lag",
    "use_ssl",
    "max_latency_ms",
    "comment",
}
USER_COLUMNS = {
    "username",
    "password",
    "active",
    "use_ssl",
    "default_hostgroup",
    "default_schema",
    "schema_locked",
    "transaction_persistent",
    "fast_forward",
    "backend",
    "frontend",
    "max_connections",
    "attributes",
    "comment",
}
RULE_COLUMNS = {
    "rule_id",
    "active",
    "username",
    "schemaname",
    "flagIN",
    "client_addr",
    "proxy_addr",
    "proxy_port",
    "digest",
    "match_digest",
    "match_pattern",
    "negate_match_pattern",
    "re_modifiers",
    "flagOUT",
    "replace_pattern",
    "destination_hostgroup",
    "cache_ttl",
    "cache_empty_result",
    "cache_timeout",
    "reconnect",
    "timeout",
    "retries",
    "delay",
    "next_query_flagIN",
    "mirror_flagOUT",
    "mirror_hostgroup",
    "error_msg",
    "OK_msg",
    "sticky_conn",
    "multiplex",
    "gtid_from_hostgroup",
    "log",
    "apply",
    "attributes",
    "comment",
}
MYSQL_VARIABLES = {
    "threads",
    "max_connections",
    "interfaces",
    "multiplexing",
    "connection_delay_multiplex_ms",
    "free_connections_pct",
    "connection_max_age_ms",
    "ping_interval_server_msec",
    "ping_timeout_server",
    "connect_timeout_server",
    "monitor_username",
    "monitor_password",
    "default_query_timeout",
    "max_transaction_time",
    "poll_timeout",
    "server_version",
}
TOP_LEVEL = {
    "datadir",
    "admin_variables",
    "mysql_variables",
    "mysql_servers",
    "mysql_users",
    "mysql_query_rules",
    "scheduler",
    "mysql_replication_hostgroups",
}


def test_parser_reads_libconfig_and_rejects_bad_syntax() -> None:
    parsed = parse_libconfig(
        '# c\na = 1; b: "x\\"y", c = (1, {d = true}) /* x */ e = [1, 2]\n// end\nf = 0x10L\n'
    )
    assert parsed == {"a": 1, "b": 'x"y', "c": [1, {"d": True}], "e": [1, 2], "f": 16}
    for bad in ("a = {b = 1", "a = (1 2)", "a 1", "a = [ {b = 1} ]", "a = 1\na = 2", '"a" = 1'):
        with pytest.raises(LibconfigError):
            parse_libconfig(bad)


# ----------------------------------------------------------------- the generator


def fleet(**proxy: Any) -> FleetShape:
    return FleetShape(
        hosts=10,
        processes_per_host=4,
        worker_model=WorkerModel.THREADS,
        concurrency=4,
        consumers=4,
        other_clients=2,
        reserved=1,
        proxy=ProxyShape(
            kind="proxysql", server_pool_size=proxy.pop("pool", 30), max_client_conn=500, **proxy
        ),
    )


def report_for(shape: FleetShape, max_connections: int = 151) -> Any:
    settings = PoolSettings(pool_size=2, max_overflow=1, pool_recycle=600)
    return ConnectionBudget(shape, settings).report(ServerLimits.declared(max_connections))


def test_generated_config_parses_and_carries_the_budget() -> None:
    report = report_for(fleet())
    text = proxysql_config(
        report,
        backends=[Backend.parse("db1:3306"), Backend.parse("db2")],
        users=["app", "reporting"],
        hostgroup=10,
        schema="coupons",
        wait_timeout=300,
    )
    cfg = parse_libconfig(text)
    assert set(cfg) <= TOP_LEVEL
    variables = cfg["mysql_variables"]
    assert set(variables) <= MYSQL_VARIABLES
    assert variables["max_connections"] == 500  # the proxy's client limit
    assert variables["multiplexing"] is True
    assert variables["connection_max_age_ms"] == (300 - 30) * 1000  # below wait_timeout
    servers = cfg["mysql_servers"]
    assert [(s["address"], s["port"]) for s in servers] == [("db1", 3306), ("db2", 3306)]
    for server in servers:
        assert set(server) <= SERVER_COLUMNS
        assert server["hostgroup"] == 10
        assert server["max_connections"] == 30  # the proxy's server pool per backend
    users = cfg["mysql_users"]
    assert [u["username"] for u in users] == ["app", "reporting"]
    for user in users:
        assert set(user) <= USER_COLUMNS
        assert user["default_hostgroup"] == 10
        assert user["transaction_persistent"] == 1
        assert user["fast_forward"] == 0
        assert user["max_connections"] == 10 * 4 * 3 + 4  # what the fleet opens
        assert user["password"] == "CHANGE_ME"
    for rule in cfg["mysql_query_rules"]:
        assert set(rule) <= RULE_COLUMNS
        assert re.match(rule["match_digest"], "SELECT @@transaction_isolation")
        assert not re.match(rule["match_digest"], "SELECT @x")


def test_refuses_a_fleet_that_does_not_fit_or_has_no_proxysql() -> None:
    with pytest.raises(ProxySQLConfigError, match="does not fit: server side"):
        proxysql_config(
            report_for(fleet(placement="per-host")), backends=[Backend("db")], users=["app"]
        )
    no_proxy = ConnectionBudget(FleetShape(), PoolSettings()).report(None)
    with pytest.raises(ProxySQLConfigError, match=r'fleet\.proxy\.kind = "proxysql"'):
        proxysql_config(no_proxy, backends=[Backend("db")], users=["app"])
    with pytest.raises(ProxySQLConfigError, match="plain MySQL user"):
        proxysql_config(report_for(fleet()), backends=[Backend("db")], users=['a" x'])
    with pytest.raises(ProxySQLConfigError, match="port must be a number"):
        Backend.parse("db:x")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("POOLTENDER_"):
            monkeypatch.delenv(key)
    return CliRunner()


def test_cli_writes_a_parsable_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "proxysql.cnf"
    args = [
        "proxysql-config",
        "--hosts",
        "10",
        "--processes",
        "4",
        "--proxy-server-pool-size",
        "20",
        "--proxy-max-client-conn",
        "400",
        "--max-connections",
        "151",
        "--server",
        "10.0.0.5:3307",
        "--user",
        "app",
        "-o",
        str(out),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = parse_libconfig(out.read_text())
    assert cfg["mysql_servers"][0] == {
        "address": "10.0.0.5",
        "port": 3307,
        "hostgroup": 0,
        "max_connections": 20,
        "weight": 1,
        "comment": "budget: server_pool_size 20",
    }
    assert cfg["mysql_variables"]["max_connections"] == 400


def test_cli_refuses_naming_the_term(runner: CliRunner) -> None:
    args = [
        "proxysql-config",
        "--hosts",
        "10",
        "--processes",
        "40",
        "--max-connections",
        "151",
        "--server",
        "db",
        "--user",
        "app",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "refused: client side: 400 client connections reach the proxy" in result.output
    assert "fleet.proxy.max_client_conn" in result.output


@pytest.mark.parametrize(
    ("statement", "breaks"),
    [
        ("START TRANSACTION", True),
        ("LOCK TABLES coupons WRITE", True),
        ("SELECT GET_LOCK('codegen', 10)", True),
        ("SET @n = 1", True),
        ("SELECT @n", True),
        ("SELECT SQL_CALC_FOUND_ROWS * FROM coupons LIMIT 10", True),
        ("CREATE TEMPORARY TABLE t (id INT)", True),
        ("PREPARE s FROM 'SELECT 1'", True),
        ("SELECT @@transaction_isolation", False),
        ("SELECT * FROM users WHERE email = 'a@example.com'", False),
        ("UPDATE coupons SET use_count = use_count + 1 WHERE id = 3", False),
    ],
)
def test_multiplexing_breakers(statement: str, breaks: bool) -> None:
    assert (multiplexing_breaker(statement) is not None) is breaks


def test_cli_keeps_a_configured_pgbouncer_and_refuses_it(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet.proxy]\nkind = "pgbouncer"\n')
    result = runner.invoke(
        main, ["proxysql-config", "--config", str(path), "--server", "db", "--user", "app"]
    )
    assert result.exit_code == 2, result.output
    assert "no ProxySQL in front" in result.output
