"""A stand-in for the Hugging Face hub on 127.0.0.1, so the real huggingface_hub client code runs in tests.

It answers the routes a push uses and records every request: repo creation (with the visibility asked for),
branch creation, README validation, preupload (every file answered `regular`, so the files travel base64 inside
the commit and neither LFS nor Xet storage is needed — huggingface_hub only takes those paths for files the
server marks `lfs`), the commit (its ndjson decoded into the files added and the files or folders deleted), and
the routes `snapshot_download` and `list_repo_files` read: a revision's commit (repo info), its file tree, and
each file (`resolve`, HEAD and GET). A revision is a branch or the commit at its head. Any other route is
answered 404 and recorded in `unknown` (huggingface_hub asks for /api/agent-harnesses when it builds its
user-agent). `token` is the one token it accepts (401 otherwise); `fail` makes a route answer a status, `drop`
makes it close the connection without an answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest

from finetune import hub

USER = "standin-user"
TOKEN = "hf_testSECRET123"  # the fake token the tests push with: it must reach no uploaded file
REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = {
    "create": re.compile(r"^/api/repos/create$"),
    "validate": re.compile(r"^/api/validate-yaml$"),
    "preupload": re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>.+)$"),
    "commit": re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>.+)$"),
    "branch": re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>.+)$"),
    "info": re.compile(rf"^/api/models/{REPO}/revision/(?P<rev>[^/]+)$"),
    "tree": re.compile(rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(/(?P<path>.*))?$"),
    "resolve": re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
}
EMPTY = "0" * 40  # the commit of a repo (or branch) no push has reached yet


@dataclass
class Repo:
    private: bool | None  # None: the client asked for no visibility (the hub's default, public)
    branches: dict = field(default_factory=lambda: {"main": EMPTY})  # branch -> the commit at its head
    files: dict = field(default_factory=dict)  # (branch, path) -> bytes

    def branch(self, rev: str) -> str | None:
        """The branch a revision names: a branch's name, or the commit at its head."""
        return rev if rev in self.branches else next((b for b, c in self.branches.items() if c == rev), None)


@dataclass
class Commit:
    repo: str
    revision: str
    message: str
    files: dict  # path -> bytes
    deleted: list = field(default_factory=list)  # paths, and folders ending in "/"


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) for the life of a `with` block: the stand-in hub and
    the test proxy. A subclass gives `_handler()` (the request handler class) and calls `serve(self)` last."""

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def serve(server: LocalServer) -> None:
    server.server = ThreadingHTTPServer(("127.0.0.1", 0), server._handler())
    server.url = f"http://127.0.0.1:{server.server.server_address[1]}"
    server._thread = threading.Thread(target=server.server.serve_forever, daemon=True)


class StandInHub(LocalServer):
    def __init__(self, token: str, fail: dict | None = None, drop: set | None = None):
        self.token, self.fail, self.drop = token, dict(fail or {}), set(drop or ())
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.unknown: list[str] = []
        self.bodies: list[bytes] = []  # every request body, to search for the token
        self.repos: dict[str, Repo] = {}
        self.commits: list[Commit] = []
        self._lock = threading.Lock()
        serve(self)

    def pushed(self, repo: str, branch: str = "main") -> dict:
        """The repo's files on `branch` after all commits: path -> bytes."""
        return {p: b for (br, p), b in self.repos[repo].files.items() if br == branch}

    def leaks(self, secret: str) -> list[str]:
        """Where `secret` reached the stand-in other than in the Authorization header: uploaded files (by path)
        and request bodies."""
        found = [
            f"{c.repo}:{path}" for c in self.commits for path, b in c.files.items() if secret.encode() in b
        ]
        return found + [f"request body {i}" for i, b in enumerate(self.bodies) if secret.encode() in b]

    # ---------------------------------------------------------------- the routes

    def _answer(self, kind: str, match, body: bytes, handler) -> tuple[int, dict]:
        if kind == "create":
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            visibility = payload.get("visibility")
            self.repos[repo_id] = Repo(private=None if visibility is None else visibility == "private")
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if kind == "validate":
            return 200, {"errors": [], "warnings": []}
        repo = self.repos.get(match["repo"])
        if repo is None:
            return 404, {"error": "Repository not found"}
        if kind == "branch":
            if match["rev"] in repo.branches:
                return 409, {"error": "Branch already exists"}
            repo.branches[match["rev"]] = repo.branches["main"]
            for (br, p), b in list(repo.files.items()):
                if br == "main":
                    repo.files[(match["rev"], p)] = b
            return 200, {}
        branch = repo.branch(unquote(match["rev"]))
        if branch is None:
            return 404, {"error": f"Invalid rev id: {match['rev']}"}
        if kind in ("info", "tree", "resolve"):
            return self._read(kind, match, repo, branch, handler)
        if kind == "preupload":
            files = json.loads(body)["files"]
            return 200, {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            }
        # commit: ndjson lines {"key": "header"|"file"|"lfsFile"|..., "value": {...}}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files, deleted = {}, []
        for item in lines:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(
                    item["value"]["path"].rstrip("/") + ("/" if item["key"] == "deletedFolder" else "")
                )
            elif item["key"] != "header":
                return 400, {"error": f"the stand-in only takes regular files, got {item['key']}"}
        for path in deleted:  # the hub applies a commit's deletions, then its files
            gone = [
                k
                for k in repo.files
                if k[0] == branch and (k[1] == path or k[1].startswith(path) and path.endswith("/"))
            ]
            if not gone:
                return 404, {"error": f"{path}: no such file to delete"}
            for key in gone:
                del repo.files[key]
        self.commits.append(Commit(match["repo"], branch, header["summary"], files, deleted))
        for path, content in files.items():
            repo.files[(branch, path)] = content
        oid = f"{len(self.commits):040x}"
        repo.branches[branch] = oid
        return 200, {"commitUrl": f"{self.url}/{match['repo']}/commit/{oid}", "commitOid": oid}

    def _read(self, kind: str, match, repo: Repo, branch: str, handler) -> tuple[int, dict | bytes]:
        files = {p: b for (br, p), b in repo.files.items() if br == branch}
        sha = repo.branches[branch]
        if kind == "info":
            return 200, {"id": match["repo"], "sha": sha, "private": bool(repo.private),
                         "siblings": [{"rfilename": p} for p in sorted(files)]}  # fmt: skip
        if kind == "tree":
            under = unquote(match["path"] or "").strip("/")
            return 200, [
                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(files.items())
                if not under or p.startswith(under + "/")
            ]
        data = files.get(unquote(match["path"]))
        if data is None:
            return 404, {"error": "Entry not found"}
        handler.extra_headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 200, data

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                self.extra_headers = {}
                path = self.path.split("?", 1)[0]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub._lock:
                    hub.requests.append((self.command, path))
                    hub.bodies.append(body)
                    kind, match = next(
                        ((k, m) for k, r in ROUTES.items() if (m := r.match(path))), (None, None)
                    )
                    if kind in hub.drop:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if kind is None:
                        hub.unknown.append(path)
                        status, answer = 404, {"error": "Not Found"}
                    elif kind in hub.fail:
                        status, answer = hub.fail[kind], {"error": "refused by the stand-in"}
                    elif self.headers.get("authorization") != f"Bearer {hub.token}":
                        status, answer = 401, {"error": "Invalid credentials in Authorization header"}
                    else:
                        status, answer = hub._answer(kind, match, body, self)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/octet-stream" if isinstance(answer, bytes) else "application/json",
                )
                self.send_header("Content-Length", str(len(data)))
                for name, value in getattr(self, "extra_headers", {}).items():
                    self.send_header(name, value)
                if status == 404 and kind is not None:
                    self.send_header("X-Error-Code", "EntryNotFound" if kind == "resolve" else "RepoNotFound")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _serve

        return Handler


# ---------------------------------------------------------------- fixtures (import them into a test module)


@pytest.fixture()
def standin():
    with StandInHub(TOKEN) as server:
        yield server


@pytest.fixture()
def hub_env(monkeypatch, standin, tmp_path):
    """This process talks to the stand-in, online, with the fake token; undone after the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", standin.url)
    template = f"{standin.url}/{{repo_id}}/resolve/{{revision}}/{{filename}}"  # downloads (hf_hub_url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(hub, "_offline", False)
    return standin
