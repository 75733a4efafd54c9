"""Hub ids without a network: fail in a second with one line, not after a minute of retries.

huggingface_hub retries every request five times with backoff (~50 s) before transformers reports that it
"couldn't connect". When a config names hub ids (a base model, a tokenizer, a dataset) and huggingface.co
(or HF_ENDPOINT) cannot be reached within a few seconds, we switch this process to offline mode
(HF_HUB_OFFLINE=1): what is in the local cache loads as usual, anything else fails at once with the
libraries' "not in the cached files" error, which our loaders turn into one line naming the key.

Nothing is probed when every path is local, when the user already chose offline mode, or behind a proxy
(HTTPS_PROXY ...), where a direct connection says nothing about what the libraries can reach.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_SECONDS = 3.0


def reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Can a TCP connection to the hub's endpoint be opened within `timeout` seconds?"""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_if_unreachable(ids: list[str]) -> str | None:
    """Switch to offline mode when this config needs the hub and it cannot be reached: the note to print."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE"
    ):
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


def go_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process and its children, also where the libraries already read it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
