"""The OpenAPI schema's extras: ``GenerateRequest`` (sent as the JSON ``params`` form field), the
API-key security schemes, and file fields spelled as OpenAPI 3.0 binaries."""

from __future__ import annotations

import json

from fastapi import FastAPI

from ..config import GenerateRequest


def document_schema(app: FastAPI, *, api_key_required: bool) -> None:
    """Wrap ``app.openapi``: add ``GenerateRequest`` and the security schemes (required on every
    operation but the health check when the server has a key)."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["GenerateRequest"] = GenerateRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            _mark_files_binary(components.get("schemas", {}))
            if api_key_required:
                schema["security"] = [{"bearer": []}, {"apiKey": []}]
                for operation in schema.get("paths", {}).get("/v1/health", {}).values():
                    operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _mark_files_binary(node) -> None:
    """File fields (``contentMediaType: application/octet-stream``) also get ``format: binary``,
    the OpenAPI 3.0 spelling most clients and fuzzers look for to send a file part; an optional
    file field is declared as the file (multipart has no null: a part is sent or left out)."""
    if isinstance(node, dict):
        for prop in (node.get("properties") or {}).values():
            options = prop.get("anyOf") if isinstance(prop, dict) else None
            if options and len(options) == 2 and {"type": "null"} in options:
                (kept,) = [o for o in options if o != {"type": "null"}]
                if "application/octet-stream" in json.dumps(kept):
                    del prop["anyOf"]
                    prop.update(kept)
        if node.get("contentMediaType") == "application/octet-stream" and node.get("type") == "string":
            node.setdefault("format", "binary")
        for value in node.values():
            _mark_files_binary(value)
    elif isinstance(node, list):
        for value in node:
            _mark_files_binary(value)
