"""Hub ids without a network: fail in a second with one line, not after a minute of retries.

huggingface_hub retries every request five times with backoff (~50 s) before transformers reports that it
"couldn't connect". When a config names hub ids (a base model, a tokenizer, a dataset) and huggingface.co
(or HF_ENDPOINT) cannot be reached within a few seconds, we switch this process to offline mode
(`local_files_only` for our model and tokenizer loaders, HF_HUB_OFFLINE=1 for child processes): what is in
the local cache loads as usual, anything else fails at once with the libraries' "not in the cached files"
error, which our loaders turn into one line naming the key.

Nothing is probed when every path is local, when the user already chose offline mode, or behind a proxy
(HTTPS_PROXY ...), where a direct connection says nothing about what the libraries can reach.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse
from urllib.request import getproxies_environment, proxy_bypass_environment

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_SECONDS = 3.0


def reachable(timeout: float = PROBE_SECONDS, endpoint: str | None = None) -> bool:
    """Can a TCP connection to the hub's endpoint (default: HF_ENDPOINT's) be opened within `timeout` seconds?"""
    endpoint = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def proxy_for(endpoint: str) -> str | None:
    """The proxy that requests to `endpoint` go through, as the HTTP client reads the environment (HTTPS_PROXY
    for https, HTTP_PROXY for http, ALL_PROXY for both, NO_PROXY excepted), shown without its credentials; None
    for a direct connection. Behind a proxy a direct TCP probe says nothing: the push skips it and lets the
    client's own errors decide (outputs/push.py)."""
    proxies = getproxies_environment()
    url = urlparse(endpoint)
    proxy = proxies.get(url.scheme or "https") or proxies.get("all")
    if not proxy or proxy_bypass_environment(url.hostname or "", proxies):
        return None
    shown = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = f":{shown.port}" if shown.port else ""
    return f"{shown.scheme}://{shown.hostname}{port}"  # never user:password@


def offline_if_unreachable(ids: list[str]) -> str | None:
    """Switch to offline mode when this config needs the hub and it cannot be reached: the note to print."""
    if is_offline() or os.environ.get("TRANSFORMERS_OFFLINE"):
        return None
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    if not ids or reachable():
        return None
    go_offline()
    others = " and the other hub ids" if len(ids) > 1 else ""
    return (
        f"the Hugging Face hub cannot be reached (no network?): working offline, so {ids[0]!r}{others} "
        "must be in the local cache"
    )


_offline = False  # set once by go_offline: this process loads from the local cache only


def go_offline() -> None:
    """Offline from now on: model and tokenizer loaders pass `local_files_only` (loader_kwargs), the libraries
    already imported are told (libraries_offline), and child processes (torchrun ranks, dataset workers)
    inherit HF_HUB_OFFLINE=1, which the libraries read when they are imported."""
    global _offline
    _offline = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    libraries_offline()


def is_offline() -> bool:
    return _offline or os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")


def loader_kwargs() -> dict:
    """`local_files_only=True` for from_pretrained once offline: the libraries' public switch for one call."""
    return {"local_files_only": True} if _offline else {}


def libraries_offline() -> None:
    """huggingface_hub and datasets read HF_HUB_OFFLINE once, at import, into module constants, and only those
    stop every request: with `local_files_only=True` huggingface_hub 1.33 still fetches its agent registry when
    it builds request headers, and datasets 5.2 with `DownloadConfig(local_files_only=True)` still asks the Hub
    API to resolve a dataset id (both seen as connection attempts in tests/test_hub.py). So the constants of
    the modules already imported are set too; tests/test_hub.py fails if that stops keeping us offline."""
    for module in ("huggingface_hub.constants", "datasets.config"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            loaded.HF_HUB_OFFLINE = True
