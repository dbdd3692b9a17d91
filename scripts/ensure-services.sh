#!/usr/bin/env bash
# Start the local MariaDB, PostgreSQL and RabbitMQ the test suite talks to, when they are
# installed but not running. Never reconfigures a running server.
# Servers are expected on 127.0.0.1 (MariaDB 3306 root/no password, PostgreSQL 5432 trust,
# RabbitMQ 5672 guest/guest); TEST_MARIADB_URL / TEST_POSTGRES_URL / TEST_BROKER_URL point
# the suite elsewhere.
set -uo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done; return 1; }

if ! port_open 3306 && [ -x /usr/sbin/mariadbd ]; then
  echo "starting MariaDB"
  # A pid file of our own: with --exec alone, start-stop-daemon takes any private mariadbd a
  # test started (tests/pooltender/_servers.py) for the shared one and starts nothing.
  start-stop-daemon --start --background --make-pidfile \
    --pidfile /run/mysqld/mariadbd-shared.pid --exec /usr/sbin/mariadbd || true
  wait_port 3306 || echo "warning: MariaDB did not come up on 3306" >&2
fi
if ! port_open 5432 && [ -d /etc/postgresql ]; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432 || echo "warning: PostgreSQL did not come up on 5432" >&2
fi
if ! port_open 5672 && command -v rabbitmq-server >/dev/null; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port 5672 || echo "warning: RabbitMQ did not come up on 5672" >&2
fi
exit 0
