"""JSON Schemas of the spec kinds, generated from the pydantic models (pure)."""

from __future__ import annotations

import json
from typing import Any

from mlp.specs.models import KINDS


def schema_for(kind: str) -> dict[str, Any]:
    schema = KINDS[kind].model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://mlp.dev/schemas/v1/{kind.lower()}.json"
    return schema


def exported() -> dict[str, str]:
    """File name -> JSON text of every kind's schema, as `mlp schemas export` writes them."""
    return {f"{kind.lower()}.json": json.dumps(schema_for(kind), indent=2, sort_keys=True) + "\n" for kind in KINDS}
