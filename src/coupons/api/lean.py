"""The hot routes' request path: flask-smorest's documentation without its request wrappers.

``@blp.arguments`` / ``@blp.response`` both document a route and wrap it: at request time
webargs' location machinery and flask-smorest's response wrapper run around the view. On
redeem, validate and read (most of the service's traffic) the profile in
bench/request_cpu.py showed those layers costing as much CPU as the service itself, so
those views are registered with the same decorators applied to a stub, whose ``_apidoc``
(what flask-smorest builds ``/openapi.json`` from) they take over (:func:`documented`):
the OpenAPI document is unchanged. At request time they call the same schemas directly:
:func:`json_body` loads through the blueprint's own webargs parser (so a malformed body,
a wrong content type and a validation error answer exactly as on the other routes) and
:func:`dump` serializes with the response schema through Flask's ``jsonify``, as
flask-smorest does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, jsonify, request
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError
from webargs.core import missing

F = TypeVar("F", bound=Callable[..., Any])

_PARSER = Blueprint.ARGUMENTS_PARSER


def documented(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Give a view the OpenAPI documentation ``decorators`` would, without their wrappers.

    ``documented(a, b)(view)`` documents ``view`` as ``a(b(view))`` would; put it directly
    under ``@blp.route`` (flask-smorest reads the documentation when the route registers).
    """

    def stub() -> None:  # pragma: no cover - never called, only documented
        raise NotImplementedError

    wrapped: Any = stub
    for decorator in reversed(decorators):
        wrapped = decorator(wrapped)
    apidoc = wrapped._apidoc

    def attach(view: F) -> F:
        view._apidoc = apidoc  # type: ignore[attr-defined]
        return view

    return attach


def json_body(schema: Schema) -> dict[str, Any]:
    """The request's JSON body loaded with ``schema``, as ``@blp.arguments(schema)`` would.

    Invalid JSON is a 400, and a ValidationError a 422 whose messages sit under the
    ``json`` location key: webargs' own handling, through the blueprint's parser.
    """
    data = _PARSER.load_json(request, schema)
    if data is missing:
        data = {}
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as error:
        error.messages = {"json": error.messages}
        _PARSER.handle_error(error, request, schema, error_status_code=None, error_headers=None)
    return loaded


def dump(status: int, schema: Schema, value: Any) -> Response:
    """``value`` serialized with ``schema``, as ``@blp.response(status, schema)`` would."""
    response = jsonify(schema.dump(value))
    response.status_code = status
    return response
