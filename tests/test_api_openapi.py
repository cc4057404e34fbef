"""The OpenAPI document: checked in and current; schemathesis finds no 5xx and no response off its schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from mlp.api.app import openapi_document
from tests.api_support import ApiWorld

CHECKED_IN = Path(__file__).resolve().parents[1] / "mlp" / "api" / "openapi.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path_factory.mktemp("openapi"))
    from mlp.controller.store import AuditEvent, AuditLog

    log = AuditLog(w.state)
    for i in range(30):
        log.append(AuditEvent("dev", "apply", "succeeded", revision=f"r{i}", time=1000.0 + i, objects=["CREATE a/b/c"]))
    log.close()
    yield w
    w.close()


def test_checked_in_openapi_document_is_current(world: ApiWorld) -> None:
    served = openapi_document(world.app)
    if os.environ.get("MLP_UPDATE_OPENAPI") == "1":
        CHECKED_IN.write_text(served)
    assert CHECKED_IN.read_text() == served, (
        "mlp/api/openapi.json is stale: run `mlp server --openapi --state-dir /tmp/x > mlp/api/openapi.json` "
        "(or MLP_UPDATE_OPENAPI=1 pytest tests/test_api_openapi.py)"
    )


def test_served_document_is_the_checked_in_one_and_declares_permissions(world: ApiWorld) -> None:
    doc = world.client().get("/api/v1/openapi.json").json()
    assert doc["paths"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "x-mlp-permission" in operation, f"{method.upper()} {path}"
            assert PROBLEM in operation["responses"]["401" if path != "/healthz" else "503"]["content"]


PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api_schema(world: ApiWorld) -> Any:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.app)


@pytest.fixture(scope="module")
def admin_headers(world: ApiWorld) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token('data-science', 'admin')}"}


def test_schemathesis_no_5xx_and_responses_match_schema(api_schema: Any, admin_headers: dict[str, str]) -> None:
    """Every operation, with every check schemathesis has (not_a_server_error, status_code_conformance,
    content_type_conformance, response_headers_conformance, response_schema_conformance, ...).

    Driven by hand rather than through schemathesis' pytest plugin, which does not load under this pytest.
    """
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=admin_headers)

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
