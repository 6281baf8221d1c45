"""Property-based fuzz of the whole HTTP API from its own OpenAPI document.

Schemathesis turns the app's OpenAPI document into one test per operation and sends each
valid and invalid requests (boundary integers, NUL bytes, odd unicode, broken dates and
bodies), in-process through the ASGI interface: no network. No request may end in a
server error, answers must have a documented status, content type and schema, and every
client error must be the API's JSON error with a ``detail`` message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from litestar import Litestar
from litestar.serialization import encode_json
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.api.deps import services_of
from vitdex.config import load_settings
from vitdex.db import ensure_schema, make_engine, session_factory
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer

#: Examples per operation in the fuzzing phase; boundary ("coverage") cases come on top.
MAX_EXAMPLES = 30
#: A fixed seed and deterministic generation: a failure in CI is the same failure locally.
SEED = 20_240_601

FUZZ_CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        # Stateful runs follow links between operations; the document declares none.
        "phases": {"stateful": {"enabled": False}},
    }
)


def _openapi_document() -> dict[str, Any]:
    """The document ``/schema/openapi.json`` serves, built without starting an app.

    Test items are made at collection time, before any fixture exists; the requests go to
    the fixture's app (``test_served_schema_is_the_fuzzed_one`` checks it serves this).
    """
    document: dict[str, Any] = json.loads(
        encode_json(create_app(load_settings()).openapi_schema.to_schema())
    )
    return document


schema = schemathesis.openapi.from_dict(_openapi_document(), config=FUZZ_CONFIG)

#: Deleting a library wipes the indexed fixture library: run half-way, it would leave every
#: later operation fuzzing an empty catalog. It gets its own test, and its own app.
DELETE_LIBRARY = "/api/v1/libraries/{library_id}"

ENV = {
    "VITDEX_SPACES": "cls,cls@2",
    "VITDEX_PRECISION": "fp32",
    "VITDEX_BATCH_SIZE": "4",
}


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory, tiny_vit: Path) -> dict[str, str]:
    """A home, an SQLite catalog with 6 indexed photos, and allowed roots that hold them."""
    tmp = tmp_path_factory.mktemp("fuzz")
    root = tmp / "allowed"
    lib = root / "lib"
    for i in range(6):
        make_photo(
            lib / ("a" if i % 2 else "b") / f"p{i}.jpg",
            size=(64, 48),
            seed=i,
            taken_at=datetime(2023, 1 + i, 1 + i, 12, 0, 0),
            camera=("Canon", "EOS R5") if i % 2 else ("Apple", "iPhone 15"),
        )
    (root / "empty").mkdir()
    env = {
        **ENV,
        "VITDEX_HOME": str(tmp / "home"),
        "VITDEX_DATABASE_URL": f"sqlite:///{tmp / 'catalog.db'}",
        "VITDEX_MODEL": str(tiny_vit),
        "VITDEX_ALLOWED_ROOTS": str(root),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = load_settings()
        engine = make_engine(settings.storage.resolved_database_url)
        ensure_schema(engine)
        Indexer(settings, session_factory(engine), Embedder.from_settings(settings.model)).run(
            [lib]
        )
        engine.dispose()
    return env


@pytest.fixture(autouse=True)
def _env(_no_hub: None, fuzz_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzz settings for each test (in-process jobs read them again when they run)."""
    for key, value in fuzz_env.items():
        monkeypatch.setenv(key, value)


def _serve(env: dict[str, str]) -> Iterator[Litestar]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        app = create_app()
        try:
            yield app
        finally:
            services_of(app.state).close()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_env: dict[str, str]) -> Iterator[Litestar]:
    """One app for every operation but deleting a library; jobs run on its in-process queue."""
    yield from _serve(fuzz_env)


@pytest.fixture(scope="module")
def own_app(fuzz_env: dict[str, str]) -> Iterator[Litestar]:
    """A separate app (same catalog) for the operation that destroys the fixture library."""
    yield from _serve(fuzz_env)


def json_error_has_detail(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case[Any]
) -> bool | None:
    """A 4xx is the API's JSON error: its status code and a message saying what is wrong."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), (
        f"a {response.status_code} answer is {content_type!r}, not JSON"
    )
    body: Any = response.json()
    assert isinstance(body, dict), f"a {response.status_code} body is not an object: {body!r}"
    assert body.get("status_code") == response.status_code, body
    assert isinstance(body.get("detail"), str) and body["detail"].strip(), body
    return True


#: Every status an operation answers with is one its document declares, and every answer
#: (the errors' ``{status_code, detail}`` bodies included) fits the declared schema.
CHECKS = [
    not_a_server_error,
    content_type_conformance,
    status_code_conformance,
    response_schema_conformance,
]


@schema.exclude(method="DELETE", path=DELETE_LIBRARY).parametrize()
@pytest.mark.slow
def test_api_fuzz(case: Case[Any], fuzz_app: Litestar) -> None:
    case.call_and_validate(app=fuzz_app, checks=CHECKS, additional_checks=[json_error_has_detail])


@schema.include(method="DELETE", path=DELETE_LIBRARY).parametrize()
@pytest.mark.slow
def test_api_fuzz_delete_library(case: Case[Any], own_app: Litestar) -> None:
    case.call_and_validate(app=own_app, checks=CHECKS, additional_checks=[json_error_has_detail])


def test_served_schema_is_the_fuzzed_one(fuzz_app: Litestar) -> None:
    served = schemathesis.openapi.from_asgi("/schema/openapi.json", fuzz_app)
    assert served.raw_schema == schema.raw_schema
