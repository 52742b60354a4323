"""``lib/openapi.json`` describes the public JSON API: every ``/api/v1/...`` route of the app and
``/healthz``, no route the app does not have, valid OpenAPI 3.1, served at ``/api/v1/openapi.json``,
and the answers of the running app fit the documented schemas."""
from __future__ import annotations

import json
import re

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import ingest_app
from tests.apps import ROOT
from tests.frames import NIGHT_1, real_frames

DOCUMENT = ROOT / "lib" / "openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT.read_text())


def documented_routes(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in HTTP_METHODS}


def app_routes() -> set[tuple[str, str]]:
    """The app's public JSON API: ``/api/v1/...`` and ``/healthz`` (not pages, not ``/api/*.php``)."""
    routes = set()
    for route in ingest_app.app.routes:
        if route.rule.startswith("/api/v1/") or route.rule == "/healthz":
            routes.add((route.method.upper(), re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", route.rule)))
    return routes


def test_every_api_route_is_documented(document):
    missing = sorted(app_routes() - documented_routes(document))
    assert not missing, ("these routes of ingest_app.py are missing from lib/openapi.json; document them "
                         "(request, responses, security):\n" + "\n".join(f"  {m} {p}" for m, p in missing))


def test_every_documented_route_exists(document):
    extra = sorted(documented_routes(document) - app_routes())
    assert not extra, ("lib/openapi.json documents routes ingest_app.py does not have; remove or fix them:\n"
                       + "\n".join(f"  {m} {p}" for m, p in extra))


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert operation.get("responses"), f"{method.upper()} {path} documents no response"


def test_the_app_serves_the_document(deployment, document):
    response = requests.get(deployment.url + "/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == document


# --- the running app answers as documented ----------------------------------------------------

class Checker:
    """Validates an answer against the schema the document gives for its path, method and status."""

    BASE = "urn:crowdsky:openapi"

    def __init__(self, document: dict):
        self.document = document
        self.registry = Registry().with_resource(self.BASE, Resource.from_contents(
            document, default_specification=DRAFT202012))
        self.checked: set[tuple[str, str, str]] = set()

    def __call__(self, response: requests.Response, path: str) -> requests.Response:
        method, status = response.request.method.lower(), str(response.status_code)
        responses = self.document["paths"][path][method]["responses"]
        assert status in responses, f"{method.upper()} {path} answered {status}, which is not documented"
        pointer = f"/paths/{_escape(path)}/{method}/responses/{status}"
        described = responses[status]
        if "$ref" in described:
            pointer = described["$ref"][1:]
            described = self.resolve(pointer)
        if "content" in described and "application/json" in described["content"]:
            schema = {"$ref": f"{self.BASE}#{pointer}/content/application~1json/schema"}
            errors = list(Draft202012Validator(schema, registry=self.registry).iter_errors(response.json()))
            assert not errors, (f"{method.upper()} {path} {status} does not fit the document: "
                                + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]))
        self.checked.add((method.upper(), path, status))
        return response

    def resolve(self, pointer: str) -> dict:
        node = self.document
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


def test_answers_fit_the_documented_schemas(deployment, document):
    check = Checker(document)
    url = deployment.url
    check(requests.get(url + "/healthz"), "/healthz")
    credentials = {"username": "dora", "password": "correct horse battery"}
    check(requests.post(url + "/api/v1/register", json=credentials), "/api/v1/register")
    check(requests.post(url + "/api/v1/register", json=credentials), "/api/v1/register")            # taken: 400
    check(requests.post(url + "/api/v1/token", json={**credentials, "password": "wrong one!"}), "/api/v1/token")
    token = check(requests.post(url + "/api/v1/token", json=credentials), "/api/v1/token").json()["token"]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"

    check(requests.get(url + "/api/v1/status"), "/api/v1/status")                                    # 401
    session_id = check(http.post(url + "/api/v1/sessions"), "/api/v1/sessions").json()["id"]
    frames = "/api/v1/sessions/{session_id}/frames/{filename}"
    night = real_frames(NIGHT_1)[:3]
    for frame in [*night, night[0]]:                                                                  # 201, 200
        with open(frame, "rb") as body:
            check(http.put(f"{url}/api/v1/sessions/{session_id}/frames/{frame.name}", data=body), frames)
    check(http.put(f"{url}/api/v1/sessions/{session_id}/frames/notes.fit", data=b"clear skies\n" * 300), frames)
    check(http.get(f"{url}/api/v1/sessions/{session_id}"), "/api/v1/sessions/{session_id}")
    check(http.get(f"{url}/api/v1/sessions/999999"), "/api/v1/sessions/{session_id}")               # 404
    job = check(http.post(f"{url}/api/v1/sessions/{session_id}/finalize"),
                "/api/v1/sessions/{session_id}/finalize").json()["jobs"][0]
    check(http.post(f"{url}/api/v1/sessions/{session_id}/finalize"), "/api/v1/sessions/{session_id}/finalize")
    check(http.get(url + "/api/v1/status"), "/api/v1/status")
    check(http.get(f"{url}/api/v1/jobs/{job['id']}"), "/api/v1/jobs/{job_id}")
    check(http.post(f"{url}/api/v1/jobs/{job['id']}/retry"), "/api/v1/jobs/{job_id}/retry")          # 409: pending
    check(requests.get(url + "/api/v1/stacks/1"), "/api/v1/stacks/{stack_id}")                      # 404
    check(requests.get(url + "/api/v1/resolve", params={"name": "M94"}), "/api/v1/resolve")
    check(requests.get(url + "/api/v1/resolve", params={"name": "no such thing"}), "/api/v1/resolve")  # 404
    check(requests.get(url + "/api/v1/resolve"), "/api/v1/resolve")                                   # 400
    check(requests.get(url + "/api/v1/atlas/footprints"), "/api/v1/atlas/footprints")
    stacked = deployment.run("stacker.py", "--once")
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    done = check(http.get(f"{url}/api/v1/jobs/{job['id']}"), "/api/v1/jobs/{job_id}").json()
    assert done["status"] == "done", done
    check(http.get(url + "/api/v1/status"), "/api/v1/status")
    [stack] = check(http.get(url + "/api/v1/stacks", params={"object": "M 94"}), "/api/v1/stacks").json()["stacks"]
    check(http.get(f"{url}/api/v1/stacks/{stack['id']}"), "/api/v1/stacks/{stack_id}")
    check(http.patch(url + "/api/v1/me", json={"share_with_crowd": True}), "/api/v1/me")
    check(http.patch(url + "/api/v1/me", json={"share_with_crowd": "yes"}), "/api/v1/me")           # 400
    check(requests.post(url + "/api/v1/worker/claim", headers={"Authorization": f"Bearer {token}"}),
          "/api/v1/worker/claim")                                                                     # 401
    check(http.delete(f"{url}/api/v1/jobs/{job['id']}"), "/api/v1/jobs/{job_id}")
    assert len(check.checked) >= 20
