"""Container name and image lookups over a runtime's API socket (kestrel_raw/context/containerinfo.py).

A stand-in Engine API server on a Unix socket made by the test answers ``GET /containers/{id}/json`` as
docker and podman's compatible service do (200 with the container document, 404 ``no such container``); the
real podman service is exercised by tests/test_context_podman.py.
"""
from __future__ import annotations

import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from kestrel_raw.context.containerinfo import ContainerInfo, ContainerInfoCache, query_container

ID = "3f4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
DOC = {"Id": ID, "Name": "/web", "Image": "sha256:" + "ab" * 32,
       "Config": {"Image": "docker.io/library/nginx:1.25", "Hostname": "3f4b1c2d5e6f"}, "State": {"Pid": 4242}}


class Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):           # a Unix socket peer has no (host, port)
        return "unix"

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.path)
        if srv.delay:
            time.sleep(srv.delay)
        if srv.mode == "garbage":
            body, status = b"<html>hello</html>", 200
        elif srv.mode == "error":
            body, status = b'{"message":"server error"}', 500
        elif self.path == f"/containers/{ID}/json":
            body, status = json.dumps(DOC).encode(), 200
        else:
            body, status = json.dumps({"message": "no such container", "response": 404}).encode(), 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path):
    servers = []

    def serve(name="api.sock", mode="ok", delay=0.0):
        path = str(tmp_path / name)
        srv = UnixHTTPServer(path, Engine)
        srv.requests, srv.mode, srv.delay, srv.path = [], mode, delay, path
        threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(srv)
        return srv
    yield serve
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_query_found_not_found_and_bad_answers(engine, tmp_path):
    srv = engine()
    info = query_container(srv.path, ID)
    assert info == ContainerInfo(ID, "web", "docker.io/library/nginx:1.25", "sha256:" + "ab" * 32, srv.path)
    assert query_container(srv.path, "0" * 64) is None
    assert srv.requests == [f"/containers/{ID}/json", f"/containers/{'0' * 64}/json"]
    with pytest.raises(ValueError, match="answered 500"):
        query_container(engine("e.sock", mode="error").path, ID)
    with pytest.raises(ValueError, match="lacks what the Engine API defines"):
        query_container(engine("g.sock", mode="garbage").path, ID)
    with pytest.raises(FileNotFoundError):
        query_container(str(tmp_path / "nothing.sock"), ID)
    with pytest.raises(ValueError, match="not a container id"):
        query_container(srv.path, "../../images/json")


def test_cache_looks_up_once_off_the_caller_and_answers_later(engine, tmp_path):
    srv = engine(delay=0.2)
    with ContainerInfoCache([str(tmp_path / "absent.sock"), srv.path]) as cache:
        t0 = time.monotonic()
        assert cache.get(ID) is None                         # not known yet: queued, no waiting
        assert time.monotonic() - t0 < 0.1
        for _ in range(50):
            cache.get(ID)                                    # already pending: not queued again
        assert cache.wait_idle(5)
        info = cache.get(ID)
        assert (info.name, info.image, info.image_id, info.socket) == (
            "web", "docker.io/library/nginx:1.25", "sha256:" + "ab" * 32, srv.path)
        assert srv.requests == [f"/containers/{ID}/json"]
        s = cache.stats()
        assert (s.cached, s.queued, s.dropped, s.answered, s.failed) == (1, 1, 0, 1, 0)


def test_unknown_ids_are_asked_again_only_after_retry_after(engine):
    srv = engine()
    now = [0.0]
    with ContainerInfoCache([srv.path], retry_after=30, clock=lambda: now[0]) as cache:
        other = "1" * 64
        cache.get(other)
        assert cache.wait_idle(5)
        assert cache.get(other) is None and len(srv.requests) == 1
        now[0] = 31.0
        cache.get(other)
        assert cache.wait_idle(5) and len(srv.requests) == 2


def test_a_full_queue_drops_and_counts(engine):
    srv = engine(delay=0.3)
    with ContainerInfoCache([srv.path], queue_size=2) as cache:
        ids = [f"{i:064x}" for i in range(6)]
        for i in ids:
            cache.get(i)
        s = cache.stats()
        # the worker may already hold the first: 2 or 3 queued, the rest dropped
        assert s.queued + s.dropped == 6 and 2 <= s.queued <= 3
        assert cache.wait_idle(5)


def test_no_socket_answers(tmp_path):
    with ContainerInfoCache([str(tmp_path / "a.sock"), str(tmp_path / "b.sock")]) as cache:
        assert cache.get(ID) is None
        assert cache.wait_idle(5)
        assert cache.stats().failed == 1 and "b.sock" in cache.last_error


def test_the_cache_is_bounded():
    answers = {f"{i:064x}": ContainerInfo(f"{i:064x}", f"c{i}", "img", "sha256:x", "s") for i in range(5)}
    with ContainerInfoCache(["s"], max_entries=3, lookup=lambda s, cid, t: answers[cid]) as cache:
        for cid in answers:
            cache.get(cid)
            assert cache.wait_idle(5)
        assert cache.stats().cached == 3
        assert cache.get(f"{4:064x}").name == "c4"
        assert cache.get(f"{0:064x}") is None                # the oldest went
