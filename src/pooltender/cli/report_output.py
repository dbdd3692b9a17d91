"""Printing a command's report: as indented JSON with ``--json``, else through its renderer.

Shared by ``pooltender doctor`` and ``pooltender kill-idle``, whose ``--json`` contract is the
same: the report's own ``to_json()`` mapping, two-space indented, values JSON does not know
(datetimes, decimals) written as their ``str()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import click


class JsonReport(Protocol):
    def to_json(self) -> Mapping[str, Any]: ...


R = TypeVar("R", bound=JsonReport)


def emit_report(report: R, *, as_json: bool, render: Callable[[R], None]) -> None:
    """Write ``report`` to standard output: JSON when ``as_json``, else ``render(report)``."""
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        render(report)
