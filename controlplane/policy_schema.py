"""JSON Schema for policy files, generated from the built-in policies' Pydantic configs.

Editors that understand JSON Schema (VS Code's YAML extension, for one) use it to complete and
check policy files; `luthien policy schema` prints it.
"""

from typing import Any

from controlplane.policies import BUILTIN_POLICIES

_CUSTOM_CLASS = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def policy_file_schema() -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    variants = []
    for name, cls in sorted(BUILTIN_POLICIES.items()):
        config = cls.Config.model_json_schema(ref_template="#/$defs/{model}")
        for key, definition in config.pop("$defs", {}).items():
            if definitions.setdefault(key, definition) != definition:
                raise ValueError(f"two policy configs define {key!r} differently: rename one")
        variants.append(
            {
                "title": name,
                "description": cls.description,
                "type": "object",
                "properties": {"class": {"const": name}, "config": config},
                "required": ["class"],
                "additionalProperties": False,
            }
        )
    variants.append(
        {
            "title": "a policy of your own",
            "type": "object",
            "properties": {
                "class": {"type": "string", "pattern": _CUSTOM_CLASS, "description": "module:ClassName"},
                "config": {"type": "object"},
            },
            "required": ["class"],
            "additionalProperties": False,
        }
    )
    definitions["policy"] = {"oneOf": variants}
    # A composite's child is any policy spec, not just the generic {class, config} shape.
    definitions["PolicySpec"] = {"$ref": "#/$defs/policy"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Luthien policy file",
        "type": "object",
        "properties": {"policy": {"$ref": "#/$defs/policy"}},
        "required": ["policy"],
        "$defs": definitions,
    }
