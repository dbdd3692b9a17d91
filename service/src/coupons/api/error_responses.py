"""Every error status each operation can answer, with the error codes it can carry, in
``/openapi.json``.

The statuses come from the layers a request passes (see docs/reliability.md):

* every operation: 413 ``payload_too_large`` and 422 ``validation_error`` from the input
  guard (``coupons.api.common.install_input_guard``: it checks any body and the query of
  every route), 503 from pooltender (``database_unavailable``, ``service_unavailable``: an
  exhausted pool, ``overloaded``: admission shed), except ``/healthz``, which reads no
  database;
* an operation with a request body: 400 ``bad_request`` (malformed JSON, nesting deeper than
  the guard's limit);
* a bearer-protected operation: 401 (``missing_token``, ``invalid_token``,
  ``token_expired``); an admin-only one also 403 ``forbidden``;
* an operation with a path parameter: 404 ``not_found`` (a non-ASCII digit in the path);
* and the service's own errors per operation, in :data:`SERVICE_ERRORS`.

Each error response's schema is ``ApiError`` with ``error.code`` an enum of its codes
(``allOf``), and the codes are also listed in the extension ``x-error-codes`` and in the
description. flask-smorest's catch-all ``default``
response is dropped, so a status outside the document is a conformance failure (the
schemathesis run in tests/test_schemathesis.py checks it). This is an apispec plugin
(``operation_helper``, apispec's documented extension point), added by
:class:`coupons.api.schemas.CouponsApi`.
"""

from __future__ import annotations

from typing import Any, Final

from apispec import BasePlugin

#: The API's path prefix (coupons.api.PREFIX; repeated here to keep the import one-way).
_PREFIX: Final = "/api/v1"

UNAVAILABLE: Final = ("database_unavailable", "service_unavailable", "overloaded")
UNAUTHENTICATED: Final = ("missing_token", "invalid_token", "token_expired")

#: Operations only an admin may call (403 for the service role).
ADMIN_ONLY: Final = frozenset(
    {
        "post /users",
        "post /campaigns",
        "patch /campaigns/{campaign_id}",
        "post /campaigns/{campaign_id}/codes",
        "post /campaigns/{campaign_id}/codes/generate",
        "get /campaigns/{campaign_id}/codes.csv",
    }
)

_CAMPAIGN_VALUES: Final = (
    "invalid_name",
    "invalid_amount",
    "invalid_discount",
    "invalid_currency",
    "invalid_window",
    "invalid_max_redemptions",
    "invalid_per_customer_limit",
    "invalid_fields",
)
_IDEMPOTENCY_400: Final = ("invalid_idempotency_key", "idempotency_key_too_long")

#: The service's own error codes per operation ("method path" under /api/v1) and status.
SERVICE_ERRORS: Final[dict[str, dict[int, tuple[str, ...]]]] = {
    "get /readyz": {503: ("database_unavailable",)},
    "post /auth/login": {401: ("invalid_credentials",), 429: ("too_many_attempts",)},
    "post /auth/refresh": {401: ("invalid_refresh_token", "refresh_token_reused")},
    "post /users": {409: ("email_taken",)},
    "post /campaigns": {422: _CAMPAIGN_VALUES},
    "get /campaigns": {400: ("invalid_cursor",), 422: ("invalid_limit",)},
    "get /coupons": {400: ("invalid_cursor",), 422: ("invalid_limit",)},
    "get /campaigns/{campaign_id}": {404: ("campaign_not_found",)},
    "patch /campaigns/{campaign_id}": {
        404: ("campaign_not_found",),
        409: ("max_redemptions_below_count",),
        422: _CAMPAIGN_VALUES,
    },
    "post /campaigns/{campaign_id}/codes": {
        404: ("campaign_not_found",),
        409: ("code_taken",),
        422: ("invalid_code", "invalid_max_uses"),
    },
    "post /campaigns/{campaign_id}/codes/generate": {
        404: ("campaign_not_found",),
        409: ("code_taken",),
        422: (
            "invalid_count",
            "invalid_max_uses",
            "invalid_pattern",
            "pattern_space_too_small",
            "pattern_space_exhausted",
        ),
    },
    "get /campaigns/{campaign_id}/codes.csv": {404: ("campaign_not_found",)},
    "get /coupons/{code}": {404: ("coupon_not_found",)},
    "post /redemptions": {
        400: _IDEMPOTENCY_400,
        409: (
            "coupon_exhausted",
            "customer_limit_reached",
            "already_redeemed",
            "idempotency_key_in_progress",
        ),
        422: (
            "coupon_not_found",
            "coupon_expired",
            "coupon_not_yet_valid",
            "campaign_inactive",
            "order_total_below_minimum",
            "currency_mismatch",
            "idempotency_key_reused",
        ),
    },
    "get /redemptions/{redemption_id}": {404: ("redemption_not_found",)},
    "post /redemptions/{redemption_id}/rollback": {
        400: _IDEMPOTENCY_400,
        404: ("redemption_not_found",),
        409: ("idempotency_key_in_progress",),
        422: ("idempotency_key_reused",),
    },
}

_METHODS: Final = ("get", "put", "post", "patch", "delete")


def error_codes(key: str, operation: dict[str, Any], path: str) -> dict[int, list[str]]:
    """Status -> error codes for the operation ``key`` ("method path")."""
    codes: dict[int, list[str]] = {413: ["payload_too_large"], 422: ["validation_error"]}
    if key != "get /healthz":
        codes[503] = list(UNAVAILABLE)
    else:
        codes[503] = ["overloaded"]
    if "requestBody" in operation:
        codes[400] = ["bad_request"]
    if operation.get("security"):
        codes[401] = list(UNAUTHENTICATED)
        if key in ADMIN_ONLY:
            codes[403] = ["forbidden"]
    if "{" in path:
        codes[404] = ["not_found"]
    for status, extra in SERVICE_ERRORS.get(key, {}).items():
        codes[status] = [*codes.get(status, []), *extra]
    return codes


def _error_schema(codes: list[str]) -> dict[str, Any]:
    """``ApiError`` with its ``code`` limited to ``codes`` (so a response carrying another
    code fails schema conformance)."""
    return {
        "allOf": [
            {"$ref": "#/components/schemas/ApiError"},
            {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string", "enum": codes}},
                    }
                },
            },
        ]
    }


def _description(existing: Any, codes: list[str]) -> str:
    listed = ", ".join(codes)
    if isinstance(existing, dict) and existing.get("description"):
        return f"{existing['description']} (error codes: {listed})"
    return f"error codes: {listed}"


class ErrorResponsesPlugin(BasePlugin):
    """Complete each operation's error responses (see the module docstring)."""

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if path is None or not operations or not path.startswith(_PREFIX):
            return
        short = path[len(_PREFIX) :]
        for method, operation in operations.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("default", None)
            for status, codes in sorted(error_codes(f"{method} {short}", operation, path).items()):
                existing = responses.get(str(status))
                response: dict[str, Any] = {
                    "description": _description(existing, codes),
                    "content": {"application/json": {"schema": _error_schema(codes)}},
                    "x-error-codes": codes,
                }
                if status in (429, 503):
                    response["headers"] = {
                        "Retry-After": {
                            "description": "seconds to wait before retrying",
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    }
                responses[str(status)] = response
