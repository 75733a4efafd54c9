"""`finetune push` behind an HTTP proxy: no direct probe of the hub, the requests go through the proxy, and a proxy
that cannot be reached, cannot reach the hub or asks for credentials is one line naming the endpoint and the
proxy (never its password), exit 2.

The proxy is a forwarding HTTP proxy on 127.0.0.1, written here: it takes the absolute-URL requests a client
sends a proxy, records them, and forwards each to the stand-in hub (tests/hub_standin.py) — whatever port the
URL names, so the hub's endpoint can be a port where nothing listens: reachable only through the proxy, as a
hub behind a corporate proxy is. Every address is 127.0.0.1; every connection has a timeout.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest
from test_push import RUN_FILES

from finetune import hub
from hub_standin import TOKEN, LocalServer, serve
from launching import free_port

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding"}


class ForwardingProxy(LocalServer):
    """Forwards every request to 127.0.0.1:`upstream_port`; `seen` records (method, absolute URL)."""

    def __init__(self, upstream_port: int, password: str | None = None):
        self.upstream_port = upstream_port
        self.password = password  # asked for (407) on every request when set
        self.seen: list[tuple[str, str]] = []
        serve(self)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                proxy.seen.append((self.command, self.path))
                if proxy.password is not None:  # 407, as a proxy that wants credentials answers
                    return self._answer(407, {"Proxy-Authenticate": 'Basic realm="proxy"'}, b"")
                target = urlsplit(self.path)
                if target.hostname != "127.0.0.1":  # never anywhere but this machine
                    return self._answer(403, {}, b"")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    upstream.request(self.command, path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                except OSError:
                    return self._answer(502, {}, b"bad gateway: the hub cannot be reached")
                finally:
                    upstream.close()
                kept = {
                    k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}
                }
                self._answer(answer.status, kept, data)

            def _answer(self, status: int, headers: dict, data: bytes):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

        return Handler


def cli_via(proxy: str, run, endpoint: str, home):
    """`finetune push` as a user behind a proxy runs it: HTTP_PROXY set (the endpoint is http://127.0.0.1)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_TOKEN": TOKEN,
    }
    for name in (*hub.PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        env.pop(name, None)
    env["HTTP_PROXY"] = proxy
    return subprocess.run(
        [sys.executable, "-m", "finetune.cli", "push", str(run), "me/adapter"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


def test_push_goes_through_the_proxy_without_a_direct_probe(run_copy, standin, tmp_path):
    hidden = f"http://127.0.0.1:{free_port()}"  # nothing listens: a direct probe of it would fail
    with ForwardingProxy(upstream_port=int(standin.url.rsplit(":", 1)[1])) as proxy:
        result = cli_via(proxy.url, run_copy, hidden, tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(standin.pushed("me/adapter")) == RUN_FILES
    asked = [(m, url.removeprefix(hidden)) for m, url in proxy.seen]
    assert ("POST", "/api/repos/create") in asked and ("POST", "/api/models/me/adapter/commit/main") in asked
    assert len(proxy.seen) == len(standin.requests)  # every request the hub answered came through the proxy


def test_an_unreachable_proxy_is_one_line_and_exit_2(run_copy, standin, tmp_path):
    port = free_port()
    result = cli_via(f"http://user:pw-SECRET@127.0.0.1:{port}", run_copy, standin.url, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"me/adapter: cannot reach the hub at {standin.url} through the proxy http://127.0.0.1:{port} "
        "(ConnectError): check the proxy and HTTPS_PROXY / HTTP_PROXY / NO_PROXY: nothing was pushed"
    ]
    assert standin.requests == []  # nothing went around the proxy
    assert "pw-SECRET" not in result.stdout + result.stderr


def test_a_proxy_that_cannot_reach_the_hub_is_one_line_and_exit_2(run_copy, tmp_path):
    hidden = f"http://127.0.0.1:{free_port()}"
    with ForwardingProxy(upstream_port=free_port()) as proxy:  # forwards to a port where nothing listens
        result = cli_via(proxy.url, run_copy, hidden, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"me/adapter: cannot reach the hub at {hidden} through the proxy {proxy.url} (502 from the proxy): "
        "check the proxy and HTTPS_PROXY / HTTP_PROXY / NO_PROXY: nothing was pushed"
    ]


def test_a_proxy_asking_for_credentials_is_one_line_and_exit_2(run_copy, tmp_path):
    hidden = f"http://127.0.0.1:{free_port()}"
    with ForwardingProxy(upstream_port=free_port(), password="pw-SECRET") as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        result = cli_via(f"http://user:wrong-pw-SECRET@127.0.0.1:{port}", run_copy, hidden, tmp_path)
    assert proxy.seen  # the push asked the proxy, not the hub directly
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"me/adapter: the proxy {proxy.url} asks for credentials (407 Proxy Authentication Required): put them "
        "in HTTPS_PROXY / HTTP_PROXY (http://user:password@host:port): nothing was pushed"
    ]
    assert "SECRET" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env, endpoint, shown",
    [
        ({"HTTPS_PROXY": "http://u:pw@proxy:3128"}, "https://huggingface.co", "http://proxy:3128"),
        ({"https_proxy": "proxy:3128"}, "https://huggingface.co", "http://proxy:3128"),
        ({"HTTP_PROXY": "http://proxy:8080"}, "http://127.0.0.1:5000", "http://proxy:8080"),
        ({"http_proxy": "http://proxy:8080"}, "http://127.0.0.1:5000", "http://proxy:8080"),
        ({"ALL_PROXY": "socks5://proxy:1080"}, "https://huggingface.co", "socks5://proxy:1080"),
        ({"HTTP_PROXY": "http://proxy:8080"}, "https://huggingface.co", None),  # not this scheme's proxy
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "huggingface.co"}, "https://huggingface.co", None),
        ({}, "https://huggingface.co", None),
    ],
)
def test_the_proxy_is_read_as_the_client_reads_it_without_credentials(monkeypatch, env, endpoint, shown):
    for name in (*hub.PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub.proxy_for(endpoint) == shown
