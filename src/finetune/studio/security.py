"""Safe by default: who may talk to the Studio, and which files it may touch.

- Bound to loopback (127.0.0.1, ::1, localhost), pages and reads need no token, but the Host header must name a
  loopback address (a web page elsewhere cannot reach the Studio by DNS rebinding).
- Bound to any other address, every request needs the token: `?token=` once (it becomes a cookie), the cookie,
  or the `X-Studio-Token` header. A token is generated and printed with the URL when none is given.
- Every request that changes something (POST) needs the token (the pages send it as a header) and, when the
  browser says where it comes from (Origin), the Studio's own origin.
- Every path a request names is resolved inside the root; `..`, absolute paths and symlinks out are refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
COOKIE = "finetune_studio_token"
HEADER = "x-studio-token"


class Refused(Exception):
    """A request outside what the Studio allows: (HTTP status, one line)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(18)


def check(
    *, bound_host: str, token: str, method: str, host_header: str, origin: str | None, given: str | None
) -> None:
    """Raise Refused unless the request may go on (see the module's rules)."""
    ok_token = bool(given) and hmac.compare_digest(given.encode(), token.encode())
    loopback = is_loopback(bound_host)
    if loopback:
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        if not is_loopback(name):
            raise Refused(403, f"host {host_header!r} refused: this Studio answers only on loopback")
    elif not ok_token:
        raise Refused(401, "a token is needed: open the URL the Studio printed (…/?token=…)")
    if method not in ("GET", "HEAD", "OPTIONS"):
        if not ok_token:
            raise Refused(403, "a change needs the Studio's token (reload the page)")
        if origin and origin != "null":
            origin_host = origin.split("://", 1)[-1].rstrip("/")
            if origin_host != host_header:
                raise Refused(403, f"cross-origin request from {origin} refused")


def inside(root: Path, relative: str) -> Path:
    """root / relative, resolved, refused unless it stays inside root (no `..`, no absolute path, no symlink out)."""
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise Refused(400, f"path {relative!r}: must be relative to the Studio's root")
    if any(part == ".." for part in Path(relative).parts):
        raise Refused(403, f"path {relative!r}: '..' is not allowed")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise Refused(403, f"path {relative!r}: outside the Studio's root")
    return resolved
