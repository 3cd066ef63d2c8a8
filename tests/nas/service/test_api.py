"""The REST API's refusals and its token, on the real app in this process (no job starts)."""

from __future__ import annotations

import html
import json
import os
import re

import pytest
from fastapi.testclient import TestClient

from distill.files import held
from nas.cli import main
from nas.service.app import COOKIE, MAX_BODY, create_app
from nas.service.jobs import Jobs
from nas.spec import load_spec
from nas.study.locks import writer_lock

TOKEN = "s3cret-token-of-twenty-chars"


@pytest.fixture
def client(studies):
    with TestClient(create_app(studies), base_url="http://127.0.0.1") as c:
        yield c


def one_line_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for w in words:
        assert w in message, message
    return message


def test_a_token_guards_every_request_beyond_loopback(studies):
    app = create_app(studies, token=TOKEN, host="0.0.0.0")
    with TestClient(app, base_url="http://10.1.2.3:8000", follow_redirects=False) as c:
        one_line_error(c.get("/api/studies"), 401, "bearer token")
        one_line_error(c.get("/api/studies", headers={"Authorization": "Bearer wrong"}), 401)
        one_line_error(c.get("/openapi.json"), 401)
        one_line_error(c.post("/api/searches", json={"spec": "tiny.toml"}), 401)
        ok = c.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()[0]["name"] == "tiny"
        # pages: a sign-in form that sets a cookie
        assert c.get("/", headers={"Accept": "text/html"}).headers["location"] == "/login"
        assert c.post("/login", data={"token": "wrong"}).status_code == 200  # the form again
        assert COOKIE not in c.cookies
        signed = c.post("/login", data={"token": TOKEN})
        assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
        page = c.get("/")
        assert page.status_code == 200 and "tiny" in page.text


@pytest.mark.parametrize(
    "args, words",
    [
        (["--host", "0.0.0.0"], ["--host", "--token"]),
        (["--host", "0.0.0.0", "--token", "short"], ["--token", "16 characters"]),
        (["--studies", "no-such-folder"], ["--studies", "not a folder"]),
    ],
)
def test_serve_refuses_in_one_line(studies, capsys, monkeypatch, args, words):
    monkeypatch.chdir(studies.parent)
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    assert main(["serve", "--port", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    for w in words:
        assert w in err


def test_requests_are_validated_and_refused_with_json_errors(client, studies, tmp_path):
    outside = tmp_path / "outside.toml"
    outside.write_text((studies / "tiny.toml").read_text())
    (studies / "link.toml").symlink_to(outside)
    search = lambda body: client.post("/api/searches", json=body)  # noqa: E731
    one_line_error(search({"spec": "../outside.toml"}), 400, "spec", "leaves the studies folder")
    one_line_error(search({"spec": str(outside)}), 400, "spec", "leaves the studies folder")
    one_line_error(search({"spec": "link.toml"}), 400, "spec", "leaves the studies folder")
    one_line_error(search({"spec": "nope.toml"}), 400, "spec", "no spec")
    one_line_error(search({"spec": "tiny.txt"}), 400, "spec", ".toml")
    (studies / "team").mkdir()
    (studies / "team" / "tiny.toml").write_text((studies / "tiny.toml").read_text())
    one_line_error(search({"spec": "team/tiny.toml"}), 400, "spec", "leaves the studies folder")
    one_line_error(search({"spec": "tiny.toml", "overrides": ["study.storage=sqlite:///x.db"]}), 400, "study.storage")
    one_line_error(search({"spec": "tiny.toml", "overrides": ["study.bogus=1"]}), 400, "study.bogus")
    one_line_error(search({"spec": "tiny.toml", "overrides": ["--trials"]}), 400, "overrides", "KEY=VALUE")
    one_line_error(search({"spec": "tiny.toml", "trials": 0}), 422, "trials")
    one_line_error(search({"spec": "tiny.toml", "colour": "red"}), 422, "colour")
    one_line_error(search({}), 422, "spec")
    one_line_error(
        client.post("/api/searches", content=b'{"spec": ', headers={"Content-Type": "application/json"}),
        422,
        "body: not valid JSON",
    )
    one_line_error(
        client.post("/api/searches", content=b'{"spec": "tiny.toml"}', headers={"Content-Type": "text/plain"}),
        415,
        "application/json",
    )
    big = json.dumps({"spec": "tiny.toml", "overrides": ["x=" + "y" * MAX_BODY]})
    one_line_error(client.post("/api/searches", content=big, headers={"Content-Type": "application/json"}), 413, "body")

    def chunked():  # no Content-Length: the body is counted as it arrives
        yield b'{"spec": "tiny.toml", "overrides": ["x='
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"y" * 1024
        yield b'"]}'

    one_line_error(client.post("/api/searches", content=chunked(), headers={"Content-Type": "application/json"}), 413, "body")
    one_line_error(client.post("/login", content=chunked()), 413, "body")
    one_line_error(client.post("/api/studies/tiny/distill", json={}), 422, "trial", "best")
    one_line_error(client.post("/api/studies/tiny/distill", json={"trial": 0, "resume": True, "restart": True}), 422, "resume")
    one_line_error(client.post("/api/studies/tiny/distill", json={"trial": 0}), 400, "not been searched")
    one_line_error(client.get("/api/studies/nope"), 404, "nope")
    one_line_error(client.get("/api/studies/tiny/front"), 404, "not been searched")
    one_line_error(client.get("/api/jobs/nope"), 404, "nope")
    one_line_error(client.get("/api/jobs/..%2F..%2Fetc"), 404)
    one_line_error(client.post("/api/jobs/nope/stop", json={}), 404)
    # a page answers with a page that says the same, never a traceback
    page = client.get("/studies/nope", headers={"Accept": "text/html"})
    assert page.status_code == 404 and "no study 'nope'" in html.unescape(page.text) and "Traceback" not in page.text
    # another site reaching this server through a name of its own (DNS rebinding) is refused
    one_line_error(client.get("/api/studies", headers={"Host": "evil.example:8000"}), 400, "host")
    assert not list(studies.glob("*/jobs"))  # nothing was started


def test_a_run_from_a_terminal_holds_the_study(client, studies):
    """A search the command line runs (it holds the study's lock) is named in a 409."""
    with held(writer_lock(load_spec(studies / "tiny.toml"), "search")):
        message = one_line_error(client.post("/api/searches", json={"spec": "tiny.toml"}), 409, "being searched", "pid")
        assert str(os.getpid()) in message
    assert not list(studies.glob("*/jobs"))


def test_job_ids_never_leave_the_studies_folder(studies):
    jobs = Jobs(studies)
    real = studies / "tiny" / "jobs" / "20261201-000000-search-abcdef"
    real.mkdir(parents=True)
    (real / "job.json").write_text('{"id": "20261201-000000-search-abcdef"}')
    assert jobs.find(real.name) == real
    # decoys a path through ".." would reach: studies/tiny/jobs/.. and studies/tiny/jobs/../..
    (studies / "tiny" / "job.json").write_text("{}")
    (studies / "job.json").write_text("{}")
    for job_id in ("..", "../..", "a/b", "", "x*", "*", "é", "20261201-x/../y"):
        assert jobs.find(job_id) is None, job_id


def test_the_openapi_page_documents_the_api_and_loads_nothing_from_outside(client):
    schema = client.get("/openapi.json").json()
    for path in (
        "/api/studies",
        "/api/studies/{name}",
        "/api/studies/{name}/front",
        "/api/studies/{name}/trials/{number}",
        "/api/studies/{name}/trials/{number}/card",
        "/api/searches",
        "/api/studies/{name}/distill",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/stop",
        "/api/jobs/{job_id}/resume",
    ):
        assert path in schema["paths"], path
    assert "trials" in schema["components"]["schemas"]["SearchRequest"]["properties"]
    docs = client.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", docs)
    assert urls and all(u.startswith("/") for u in urls), urls
    for u in urls:
        assert client.get(u).status_code == 200, u
    for page in ("/", "/studies/tiny"):
        html = client.get(page).text
        assert "http://" not in html and "https://" not in html
        for u in re.findall(r"""(?:src|href)="(/[^"]+)\"""", html):
            assert client.get(u).status_code == 200, u
