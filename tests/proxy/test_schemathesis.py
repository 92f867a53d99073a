"""Generated requests against rerankd's own OpenAPI description (served at /docs/openapi.json).

A bounded number of cases per operation, on loopback, with a valid key: no 5xx, every status and
body as documented, schema-invalid input refused with 4xx, and every error in the one error shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.core.result import Err
from schemathesis.schemas import BaseSchema

from tests.proxy.auth_helpers import new_key
from tests.servers import RerankdServer, rerankd_server

MAX_EXAMPLES = 40


@dataclass
class Api:
    server: RerankdServer
    key: str


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    keys = str(tmp_path_factory.mktemp("keys") / "keys.json")
    key = new_key("fuzz", "--keys-file", keys)
    # Small global limits keep generated requests cheap to score on CPU; beyond them: 400 or 413.
    args = [
        "--keys-file",
        keys,
        "--max-documents",
        "8",
        "--max-query-chars",
        "200",
        "--max-body-bytes",
        "20000",
    ]
    with rerankd_server(args) as server:
        yield Api(server, key)


@pytest.fixture(scope="module")
def api_schema(api: Api) -> BaseSchema:
    return schemathesis.openapi.from_url(api.server.url + "/docs/openapi.json")


def test_the_description_declares_bearer_keys_and_error_bodies(api: Api) -> None:
    doc = httpx.get(api.server.url + "/docs/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "rk-...",
    }
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"apiKey": []}]
        for status in ("400", "401", "413", "429", "503"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorBody"
    assert "security" not in doc["paths"]["/health"]["get"]


def check_case(case: schemathesis.Case[Any], key: str) -> None:
    response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    # Business rules beyond the schema (an unknown model, a blank query, too many documents)
    # rightly refuse some schema-valid requests, so "positive data is accepted" does not hold.
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"message", "detail", "id"}, body
        assert [body["id"]] == response.headers["x-request-id"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests(api: Api, api_schema: BaseSchema, mode: GenerationMode) -> None:
    # Driven through Hypothesis directly: schemathesis' pytest loader for fixtures does not run
    # under pytest 9 (it sets a node attribute pytest no longer has).
    operations = []
    for result in api_schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"invalid operation in the description: {result.err()}")
        operations.append(result.ok())
    labels = {op.label for op in operations}
    assert labels >= {"POST /v1/rerank", "POST /v2/rerank", "POST /rerank", "GET /v1/models"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to break in a request without parameters or body

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: schemathesis.Case[Any]) -> None:
            check_case(case, api.key)

        run()


def test_the_server_logged_no_unhandled_error(api: Api) -> None:
    assert "unhandled error" not in api.server.log()
    assert "Traceback" not in api.server.log()
