"""The service under attack: schema fuzzing (Schemathesis), hostile bodies, path-like model names,
API keys kept out of logs, and a graceful SIGTERM that finishes the requests in flight."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from schemathesis.checks import not_a_server_error

from bankintent import train
from bankintent.cli import build_parser
from bankintent.serving import create_app, serve_in_background
from conftest import tiny_options


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    train(**tiny_options(tiny_bert, tiny_data, folder))
    return folder


@pytest.fixture(scope="module")
def url(run):
    with serve_in_background(create_app(model_dir=run)) as base:
        yield base


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_schemathesis_no_server_error_and_schema_conformance(url):
    """Schemathesis generates requests from the service's own OpenAPI schema, valid and invalid, for
    every operation: none may get a 5xx, and every answer must match the schema."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/models/{name}", "/healthz", "/readyz", "/metrics"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40 if operation.path == "/v1/predict" else 5, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()


def _post(url: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=content, headers={"content-type": content_type}, timeout=30)


@pytest.mark.parametrize("content, content_type", [
    (b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),   # deeply nested JSON
    (b'{"texts": ["hi"], "top_k": {"a": {"b": {"c": [1]}}}}', "application/json"),
    (b"texts=hello", "application/x-www-form-urlencoded"),                    # wrong content types
    (b"hello", "text/plain"),
    (b"\xff\xfe\x00garbage", "application/json"),
])
def test_hostile_bodies_get_4xx_and_the_service_keeps_serving(url, content, content_type):
    response = _post(url, content, content_type)
    assert 400 <= response.status_code < 500 and response.json()["error"]
    assert _post(url, json.dumps({"texts": ["i lost my card"]}).encode()).status_code == 200


def test_bytes_that_are_no_utf8_and_json_nested_too_deeply_are_named(url):
    response = _post(url, b'{"texts": ["\xff\xfe"]}')
    assert response.status_code == 400 and response.json() == {"error": "body: invalid JSON (not UTF-8 text)"}
    response = _post(url, b'{"texts": ' + b"[" * 100000 + b"]" * 100000 + b"}")
    assert response.status_code == 400 and response.json() == {"error": "body: invalid JSON (nested too deeply)"}


def _raw_post(url: str, head: bytes, body: bytes, wait: float) -> bytes:
    """Send a POST's headers and part of its body on a socket of its own; what came back in ``wait`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b"\r\n" + body)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""


def test_a_body_declared_too_large_or_never_finished_is_answered_not_waited_for(run, monkeypatch):
    from bankintent import serving

    monkeypatch.setattr(serving, "BODY_TIMEOUT_S", 1.0)
    with serve_in_background(create_app(model_dir=run)) as base:
        started = time.monotonic()
        answer = _raw_post(base, b"Content-Length: 5000000\r\n", b"", wait=10)  # refused from its header, before any byte of it
        assert answer.startswith(b"HTTP/1.1 413") and b"request body over 1048576 bytes" in answer
        answer = _raw_post(base, b"Content-Length: 100\r\n", b'{"te', wait=10)  # 4 bytes of 100, then nothing
        assert answer.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in answer
        assert time.monotonic() - started < 8
        assert httpx.post(f"{base}/v1/predict", json={"texts": ["hi"]}, timeout=30).status_code == 200


def test_a_connection_that_sends_no_whole_request_head_in_time_is_closed(run, monkeypatch):
    """Slowloris: a header sent a byte at a time held a connection for ever (uvicorn restarts its own
    timer at every byte); a request head not complete within HEAD_TIMEOUT_S of connecting or of the
    connection's last answer closes the connection, and a request being answered is not cut."""
    from bankintent import serving

    monkeypatch.setattr(serving, "HEAD_TIMEOUT_S", 1.5)
    with serve_in_background(create_app(model_dir=run)) as base:
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"texts": ["hi"]}).encode()
        request = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        for answered_first in (False, True):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                started = time.monotonic()
                if answered_first:  # one request answered on the connection, kept alive, then a head trickled
                    sock.sendall(request)
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                    started = time.monotonic()
                closed = False
                for byte in b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        closed = True
                        break
                    time.sleep(0.1)  # every byte within uvicorn's own 5 s keep-alive timeout
                sock.settimeout(5)
                assert closed or sock.recv(4096) == b""  # closed by the server, nothing answered
                assert 1.4 < time.monotonic() - started < 5
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # a head split in two, in time
            sock.sendall(request[:20])
            time.sleep(1.0)
            sock.sendall(request[20:])
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(1.0)  # answered, then idle past the deadline's start: a second request on it is answered
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_request_answered_slowly_or_waiting_its_turn_is_not_cut_by_the_head_deadline(monkeypatch):
    """Pipelined: the second request's head has come, and it waits while the first is answered; the
    deadline armed when the first answer ended took it for a head never sent and closed the connection."""
    import asyncio

    from fastapi import FastAPI

    from bankintent import serving

    monkeypatch.setattr(serving, "HEAD_TIMEOUT_S", 1.0)
    app = FastAPI()

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(2.5)
        return {"slow": True}

    @app.get("/fast")
    async def fast():
        return {"fast": True}

    with serve_in_background(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert received.count(b"HTTP/1.1 200") == 2 and b'{"slow":true}' in received


def test_with_api_keys_a_body_without_a_key_is_refused_before_it_is_read(run, tmp_path, monkeypatch):
    """An anonymous client cannot make the service wait for, receive and parse a body: 401 from the headers."""
    from bankintent import serving

    monkeypatch.setattr(serving, "BODY_TIMEOUT_S", 30.0)
    (tmp_path / "keys.txt").write_text("key-one\n")
    with serve_in_background(create_app(model_dir=run, api_key_file=tmp_path / "keys.txt")) as base:
        for head in (b"Content-Length: 100\r\n", b"Content-Length: 100\r\nAuthorization: Bearer key-two\r\n",
                     b"Content-Length: 5000000\r\n",  # below: a bad key first, a good one second: the first counts, as for the routes
                     b"Content-Length: 100\r\nAuthorization: Bearer key-two\r\nAuthorization: Bearer key-one\r\n"):
            answer = _raw_post(base, head, b'{"te', wait=10)  # 4 bytes of the body, then nothing: 408 only after 30 s
            assert answer.startswith(b"HTTP/1.1 401") and b"missing or invalid API key" in answer and b"www-authenticate: Bearer" in answer
        answer = _raw_post(base, b"Content-Length: 100\r\nAuthorization: bearer key-one\r\n", b'{"te', wait=3)
        assert answer == b""  # the key is good: its body is waited for
        assert httpx.post(f"{base}/v1/predict", json={"texts": ["hi"]}, headers={"Authorization": "Bearer key-one"},
                          timeout=30).status_code == 200


@pytest.mark.parametrize("name", ["..%2Fadapter", "%2e%2e%2f%2e%2e%2fetc", "/etc/passwd", "adapter\x00", "..\\..\\x", "~root"])
def test_path_like_model_names_are_refused(url, name):
    response = _post(url, json.dumps({"texts": ["hi"], "model": name}).encode())
    assert response.status_code in (400, 404, 422) and "error" in response.json()


def test_binds_loopback_unless_told():
    assert build_parser().parse_args(["serve", "runs/x"]).host == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_cli_server(run, *extra) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "bankintent.cli", "serve", str(run), "--port", str(port), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


def test_on_loopback_the_service_answers_its_own_names_and_those_allowed_only(run):
    """DNS rebinding: a web page whose name is made to point at 127.0.0.1 could read a local service from
    the user's browser; a request naming another host than the service's own, or one --allowed-host
    adds (a reverse proxy passing the client's Host), is refused, counted and given the usual headers."""
    process, base = _start_cli_server(run, "--allowed-host", "intents.bank.example")
    try:
        port = base.rsplit(":", 1)[1]
        with httpx.Client(base_url=base, timeout=30) as client:
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "intents.bank.example"):
                assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
            refused = client.get("/v1/models", headers={"Host": f"evil.example:{port}"})
            assert refused.status_code == 400 and "models" not in refused.text and refused.headers["x-frame-options"] == "DENY"
            # in JSON, as every other error (it was starlette's plain text)
            assert refused.json()["error"].startswith(f"Host 'evil.example:{port}' is not a name this service answers to")
            assert 'bankintent_requests_total{path="/v1/models",status="400"} 1.0' in client.get("/metrics").text
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_api_keys_never_appear_in_logs(run, tmp_path):
    secret, wrong = "s3cret-key-Zq81", "wrong-key-Pp42"
    (tmp_path / "keys.txt").write_text(f"{secret}\n")
    process, base = _start_cli_server(run, "--api-key-file", str(tmp_path / "keys.txt"))
    try:
        assert httpx.get(f"{base}/healthz").status_code == 200  # health stays open
        body = {"texts": ["i lost my card"]}
        assert httpx.post(f"{base}/v1/predict", json=body).status_code == 401
        assert httpx.post(f"{base}/v1/predict", json=body, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        assert httpx.post(f"{base}/v1/predict", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert secret not in output and wrong not in output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # a hang-up ended the process at once
def test_sigterm_finishes_requests_in_flight(run, signum):
    process, base = _start_cli_server(run, "--max-wait-ms", "200")  # requests wait in the micro-batcher
    body = {"texts": ["my card has not arrived yet"] * 32}
    with httpx.Client(base_url=base, timeout=60) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client.post, "/v1/predict", json=body) for _ in range(16)]
        time.sleep(0.1)  # the requests are in flight
        process.send_signal(signum)
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 16
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_sent_as_another_content_type_is_told_to_send_json(url, content_type):
    response = _post(url, json.dumps({"texts": ["i lost my card"]}).encode(), content_type)  # curl -d sends form encoding
    assert response.status_code == 415
    assert response.json()["error"] == f"the body must be JSON, sent with 'Content-Type: application/json' (got {content_type})"
    no_type = httpx.post(f"{url}/v1/predict", content=json.dumps({"texts": ["i lost my card"]}).encode(), timeout=30)
    assert no_type.status_code == 415 and no_type.json()["error"].endswith("(got no content type)")  # FastAPI reads no JSON then
