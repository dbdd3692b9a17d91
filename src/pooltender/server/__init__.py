"""What talks to the database server outside the application's pool.

=====================  =============================================================
``server.limits``      :class:`ServerLimits`, :func:`read_server_limits`: max_connections,
                       the reserve, wait_timeout, current use (one definition per server)
``server.snapshot``    :class:`ServerSnapshot`, :func:`take_snapshot`: who holds the
                       connections (processlist / pg_stat_activity), status, variables
``server.doctor``      :func:`diagnose` / :func:`doctor`: ranked findings with remedies
``server.killer``      :func:`kill_idle`: idle-connection killing, dry run by default
``server._sql``        the read-only SQL helpers they share
=====================  =============================================================

Each opens its own short connection (no pool; see :func:`connect_for_inspection`), issues
only ``SELECT`` / ``SHOW`` (the killer's ``KILL`` / ``pg_terminate_backend`` only when
asked), and shows a URL only masked.

The names of the former ``pooltender.server`` module (the snapshot's) are importable from
here, as before, and so are :class:`ServerLimits` and :func:`read_server_limits`.
"""

from __future__ import annotations

from pooltender.server import snapshot as _snapshot
from pooltender.server.limits import ServerLimits, read_server_limits
from pooltender.server.snapshot import *  # noqa: F403  (the former pooltender.server's names)

__all__ = ["ServerLimits", "read_server_limits"]
__all__ += _snapshot.__all__
