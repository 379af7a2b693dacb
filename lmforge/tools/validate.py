"""Check a tool call's arguments against the tool's JSON Schema, before the call.

The subset of JSON Schema that `schema.py` writes (and that tool descriptions written by
hand commonly use): type (one or a list), nullable, enum, const, properties, required,
additionalProperties, items, prefixItems, anyOf/oneOf, minimum/maximum, minLength/
maxLength, minItems/maxItems. Every problem is reported with its path, in words a model
can act on:

    validate({"a": "x"}, schema)  →  ["a: expected integer, got string 'x'",
                                      "b: required argument is missing"]

An object's properties are closed unless the schema says `additionalProperties`: a Python
function cannot take an argument it does not name, so an unknown one is an error.
"""

from __future__ import annotations

import json
from typing import Any

JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "null", "array", "object"):
        if JSON_TYPES[name](value):
            return name
    return type(value).__name__


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way `value` breaks `schema` (empty when it conforms)."""
    where = path or "arguments"
    if value is None and schema.get("nullable"):
        return []
    for key in ("anyOf", "oneOf"):
        if key in schema:
            if any(not validate(value, option, path) for option in schema[key]):
                return []
            return [f"{where}: matches none of the allowed forms"]
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds and not any(JSON_TYPES[k](value) for k in kinds):
        wanted = " or ".join(kinds)
        return [f"{where}: expected {wanted}, got {json_type(value)} {_show(value)}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: must be {_show(schema['const'])}, got {_show(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_show(v) for v in schema["enum"])
        return [f"{where}: {_show(value)} is not one of {allowed}"]
    errors = _bounds(value, schema, where)
    if isinstance(value, dict):
        errors += _object(value, schema, path)
    elif isinstance(value, list):
        errors += _array(value, schema, path)
    return errors


def _bounds(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    checks = [
        ("minimum", lambda v, b: v >= b, "at least"),
        ("maximum", lambda v, b: v <= b, "at most"),
        ("minLength", lambda v, b: len(v) >= b, "at least {} characters long"),
        ("maxLength", lambda v, b: len(v) <= b, "at most {} characters long"),
        ("minItems", lambda v, b: len(v) >= b, "at least {} items long"),
        ("maxItems", lambda v, b: len(v) <= b, "at most {} items long"),
    ]
    errors = []
    for key, ok, rule in checks:
        if key in schema and not ok(value, schema[key]):
            said = rule.format(schema[key]) if "{}" in rule else f"{rule} {schema[key]}"
            errors.append(f"{where}: must be {said}, got {_show(value)}")
    return errors


def _object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", not properties)
    errors = []
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_join(path, name)}: required argument is missing")
    for name, item in value.items():
        if name in properties:
            errors += validate(item, properties[name], _join(path, name))
        elif extra is False:
            known = ", ".join(properties) or "none"
            errors.append(f"{_join(path, name)}: unknown argument (known: {known})")
        elif isinstance(extra, dict):
            errors += validate(item, extra, _join(path, name))
    return errors


def _array(value: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    prefix = schema.get("prefixItems", [])
    if prefix and len(value) != len(prefix):
        errors.append(f"{path or 'arguments'}: expected {len(prefix)} items, got {len(value)}")
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else schema.get("items")
        if sub:
            errors += validate(item, sub, f"{path}[{i}]")
    return errors


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
