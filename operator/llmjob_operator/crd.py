"""Generates the LLMTrainingJob CustomResourceDefinition from the pydantic API (`make crds`).

pydantic emits JSON Schema (2020-12, with $refs and anyOf-null for optional fields);
Kubernetes wants a structural OpenAPI v3 schema: everything inlined, every node typed,
free-form objects marked `x-kubernetes-preserve-unknown-fields`. This module does
that translation and nothing else.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from llmjob_operator.api import GROUP, KIND, PLURAL, VERSION, LLMTrainingJob

HEADER = "# Generated from operator/llmjob_operator/api.py by `make crds`. Do not edit.\n"
# JSON Schema keywords that mean the same in OpenAPI v3 and are kept as they are.
_KEPT_KEYWORDS = (
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "x-kubernetes-validations",
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers.summary",
        "description": "Ready/total workers",
    },
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref, keeping the referring node's own keywords (description, default)."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return {**_resolve(target, defs), **siblings}


def _without_null(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` becomes X: an optional field is simply not required."""
    options = node.get("anyOf")
    if options is None:
        return node
    kept = [option for option in options if option.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a structural OpenAPI v3 node."""
    node = _resolve(_without_null(_resolve(node, defs)), defs)
    if "anyOf" in node:
        types = {_resolve(option, defs).get("type") for option in node["anyOf"]}
        if types == {"integer", "string"}:
            return _quantity(node)
        raise ValueError(f"no structural form for a union of {sorted(map(str, types))}")
    out: dict[str, Any] = {k: node[k] for k in _KEPT_KEYWORDS if k in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in node:
        out.update(minimum=node["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in node:
        out.update(maximum=node["exclusiveMaximum"], exclusiveMaximum=True)
    if node.get("default") is not None:
        out["default"] = node["default"]
    if out.get("type") == "object":
        _object(node, out, defs)
    elif out.get("type") == "array":
        out["items"] = structural(node.get("items", {"type": "object"}), defs)
    return out


def _object(node: dict[str, Any], out: dict[str, Any], defs: dict[str, Any]) -> None:
    properties = node.get("properties")
    extra = node.get("additionalProperties")
    if properties:
        out["properties"] = {}
        for name, child in properties.items():
            schema = structural(child, defs)
            # A non-optional object field with defaults inside needs `default: {}` itself, or
            # the API server never descends into it to apply them. Optional (`X | None`)
            # fields stay absent: their presence means something.
            optional = any(option.get("type") == "null" for option in child.get("anyOf", []))
            required = name in node.get("required", [])
            nested_defaults = schema.get("type") == "object" and "properties" in schema
            if nested_defaults and not optional and not required:
                schema.setdefault("default", {})
            out["properties"][name] = schema
        if node.get("required"):
            out["required"] = list(node["required"])
    elif isinstance(extra, dict) and extra:
        out["additionalProperties"] = structural(extra, defs)
    else:
        out["x-kubernetes-preserve-unknown-fields"] = True


def _quantity(node: dict[str, Any]) -> dict[str, Any]:
    out = {k: node[k] for k in ("description",) if k in node}
    out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    out["x-kubernetes-int-or-string"] = True
    return out


def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema, generated from LLMTrainingJob."""
    schema = LLMTrainingJob.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    root = structural(schema, defs)
    # Root metadata is validated by the API server itself; a CRD may only say it is an object.
    root["properties"]["metadata"] = {"type": "object"}
    for field in ("apiVersion", "kind"):
        described = root["properties"][field]["description"]
        root["properties"][field] = {"type": "string", "description": described}
    root["required"] = ["spec"]
    return root


def custom_resource_definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["llmjob", "ltj"],
                "categories": ["llm"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render_yaml() -> str:
    body = yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", action="append", default=[], help="file to write (repeatable)")
    args = parser.parse_args(argv)
    text = render_yaml()
    if not args.out:
        sys.stdout.write(text)
    for path in args.out:
        Path(path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
