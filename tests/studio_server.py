"""A real `finetune studio` process on a free port, for the Studio's API and browser tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_root(root: Path, tiny_model_dir: Path) -> Path:
    """A Studio root as a user's project folder: examples/ (quickstart.yaml and its data) and models/tiny."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "examples", root / "examples")
    (root / "models").mkdir()
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    return root


class Studio:
    def __init__(self, root: Path, host: str = "127.0.0.1", token: str | None = None):
        self.root, self.port = root, free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        argv = [sys.executable, "-m", "finetune.cli", "studio", "--root", str(root), "--host", host,
                "--port", str(self.port)] + (["--token", token] if token else [])  # fmt: skip
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stderr.readline()  # "finetune studio: ROOT at URL"
        self.log: list[str] = []  # the rest of its stderr, drained so a full pipe never blocks it
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/api/health?token=" + (token or self.token()), timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)

    def token(self) -> str:
        return self.banner.rsplit("token=", 1)[-1].strip() if "token=" in self.banner else ""

    def page_token(self) -> str:
        html = self.get("/").read().decode()
        return html.split('name=studio-token content="', 1)[1].split('"', 1)[0]

    def get(self, path: str, headers: dict | None = None):
        return urllib.request.urlopen(
            urllib.request.Request(self.url + path, headers=headers or {}), timeout=30
        )

    def post(self, path: str, body: dict, token: str | None, headers: dict | None = None):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **({"X-Studio-Token": token} if token else {}),
                     **(headers or {})},
        )  # fmt: skip
        return urllib.request.urlopen(request, timeout=60)

    def json(self, path: str):
        return json.loads(self.get(path).read())

    def kill(self) -> None:
        """SIGKILL: nothing the Studio started may depend on it ending well."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def status_of(rows: list[dict], name: str) -> str | None:
    return next((r["status"] for r in rows if r["name"] == name), None)


def wait_for(check, timeout: float = 120, every: float = 0.3):
    """Poll check() until it returns something truthy; AssertionError after timeout (no timing asserted)."""
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting after {timeout:.0f} s")
