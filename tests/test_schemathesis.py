"""Schemathesis over /openapi.json against the app in-process (WSGI, no server).

For every documented operation, as an admin and as the service account, on SQLite and MariaDB:
requests generated from the document (schema-valid ones, then schema-invalid ones) get no
5xx, only statuses the operation documents, the documented content type, the documented
headers, and bodies matching the documented schema. The number of examples per operation is
bounded (:data:`EXAMPLES`) so the whole run stays short; the data is derandomized, so a
failure reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from coupons.models import Role
from tests.conftest import make_campaign
from tests.test_openapi import flask_operations

#: Examples per operation and generation mode (positive, negative).
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,  # a protected operation refuses the request without, or with a bad, token
]


def _run_operation(
    operation: Any, mode: GenerationMode, headers: dict[str, str], statuses: dict[int, int]
) -> int:
    """Run ``EXAMPLES`` cases of ``operation``; return how many ran."""
    ran = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        nonlocal ran
        ran += 1
        # the role's token in place of the random one schemathesis makes up for bearerAuth
        response = case.call_and_validate(
            headers={**(case.headers or {}), **headers}, checks=CHECKS
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # nothing of this operation can be made schema-invalid (no parameters, no body)
    return ran


# SQLite and MariaDB (not PostgreSQL: the schema layer is the same, and the run stays short);
# the four runs take 47-67 s on 2 shared cores, hence slow
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite", "mariadb"], indirect=True)
@pytest.mark.parametrize("role", [Role.ADMIN, Role.SERVICE])
def test_the_api_conforms_to_its_document(
    app: Flask, auth_header: Callable[..., dict[str, str]], backend: str, role: Role
) -> None:
    campaign_id = make_campaign(app)
    headers = auth_header(role)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    covered: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            covered[label] = covered.get(label, 0) + _run_operation(
                operation, mode, headers, statuses
            )
    assert campaign_id
    assert {(op.method.lower(), op.path) for op in operations} == flask_operations(app)
    assert all(count > 0 for count in covered.values()), covered
    print(
        f"{backend} {role}: {len(covered)} operations, {sum(covered.values())} cases, "
        f"statuses {dict(sorted(statuses.items()))}"
    )
