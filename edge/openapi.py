"""The OpenAPI 3.1 document, generated from the routes the app serves: paths and
operations from each `Route`, schemas from the request and reply Structs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .routing import ANY_ID, Route
from .schemas import ErrorReply
from .validation import MAX_IDEMPOTENCY_KEY

__all__ = ["openapi_document"]


def openapi_document(routes: Sequence[Route], *, auth: bool) -> dict[str, Any]:
    """An OpenAPI 3.1 document of `routes`; body schemas come from the Structs."""
    types = sorted({t for r in routes for t in _types_of(r)}, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref_of, auth)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Retinue", "version": "1",
                 "description": "Customer onboarding on a durable actor runtime."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                                "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _types_of(route: Route) -> list[Any]:
    found = [ErrorReply] + [t for _, t in route.replies.values() if t is not None]
    return found + [t for t in (route.body,) if t is not None]


def _operation(route: Route, ref_of: Mapping[Any, Any], auth: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "responses": {str(status): _response(route, description, type_, ref_of)
                      for status, (description, type_) in sorted(route.replies.items())},
    }
    parameters = _path_parameters(route) + _query_parameters(route) + _header_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": ref_of[route.body]}}
        }
    if route.method == "POST" and "415" not in operation["responses"]:
        operation["responses"]["415"] = _error("no 'Content-Type: application/json' (every "
                                               "POST needs it, body or not)", ref_of)
    if auth and route.open:
        operation["security"] = []
    elif auth:
        operation["responses"]["401"] = _error("missing or wrong token", ref_of)
        operation["responses"]["403"] = _error("a token of the other role", ref_of)
    return operation


def _error(description: str, ref_of: Mapping[Any, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": ref_of[ErrorReply]}}}


def _operation_id(route: Route) -> str:
    words = re.findall(r"[a-z]+", route.path.replace("{id}", "by_id"))
    return "_".join([route.method.lower(), *words]) if words else f"{route.method.lower()}_root"


def _response(
    route: Route, description: str, type_: Any, ref_of: Mapping[Any, Any]
) -> dict[str, Any]:
    if type_ is None:
        return {"description": description,
                "content": {route.content_type: {"schema": {"type": "string"}}}}
    return {"description": description, "content": {"application/json": {"schema": ref_of[type_]}}}


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": dict(route.id_schema or ANY_ID)}
        for name in re.findall(r"{(\w+)}", route.path)
    ]


def _query_parameters(route: Route) -> list[dict[str, Any]]:
    if route.query is None:
        return []
    return [
        {"name": field.name, "in": "query", "required": False,
         "schema": msgspec.json.schema(field.type)}
        for field in msgspec.structs.fields(route.query)
    ]


def _header_parameters(route: Route) -> list[dict[str, Any]]:
    if not route.idempotent:
        return []
    return [{"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "Resending a request with the same key and body returns the first "
                            "answer and starts nothing; another body gets 422.",
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}}]


