"""Send a run to the Hugging Face hub in one commit: `finetune push`, and the `hub_*` keys during training.

What is sent is push_files.py's allow-list. The calls are huggingface_hub's public ones: `create_repo`
(exist_ok; private unless asked otherwise), `create_branch` for a revision other than main, `list_repo_files`
when the push holds a folder that replaces the hub's (push_files.replaced_folders), and one `create_commit`
(the stale files' deletions with the new files), so a repo never holds half a push. The token is
huggingface_hub's own lookup (HF_TOKEN, else the `hf auth login` file); finetune never reads it except to make
sure no uploaded file contains it.

Every way the hub can fail becomes one line (PushFailed, a UserError: exit 2): no token, offline mode, the
endpoint unreachable (probed first, so no minute of retries), 401, 403, 404, another HTTP status, or the
connection dropping half-way. Behind a proxy (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; hub.proxy_for) there is no
probe, since a direct connection says nothing there: the client's own error on the first request becomes the
line, naming the endpoint and the proxy (never its credentials).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from finetune import hub
from finetune.config.checks import HUB_ID
from finetune.errors import UserError
from finetune.outputs import push_files
from finetune.outputs.push_files import Upload


class PushFailed(UserError):
    """The hub could not be reached or refused the push: one line. During training: a warning, and training
    goes on."""


def network_errors() -> tuple[type[Exception], ...]:
    """The transport errors (connection refused or reset, timeouts) that huggingface_hub lets escape after
    its retries: the public classes of its HTTP client, httpx2 (huggingface_hub 2.x) or httpx (1.x).
    tests/outputs/test_push.py (a connection dropped by the stand-in hub) fails if they stop being these."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def http_problem(exc, repo_id: str, revision: str | None) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return f"{repo_id}: the hub refused the token (401 Unauthorized): check HF_TOKEN or `hf auth login`"
    if status == 403:
        return f"{repo_id}: no write access (403 Forbidden): use a token that may write to this namespace"
    if status == 404:
        branch = f" or its branch {revision!r}" if revision else ""
        return f"{repo_id}: not found on the hub (404): check the repo id{branch} and the token's access"
    detail = (getattr(exc, "server_message", None) or str(exc)).strip().splitlines()
    return f"{repo_id}: the hub refused the push ({status}): {detail[0] if detail else type(exc).__name__}"


def proxy_problem(exc, repo_id: str, endpoint: str, proxy: str | None, first: bool) -> str | None:
    """The line for a push that failed at the proxy: it could not be reached (or reach the hub) on the first
    request, or it asked for credentials. None where the proxy is not the likely cause."""
    if proxy is None:
        return None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 407:
        return (
            f"{repo_id}: the proxy {proxy} asks for credentials (407 Proxy Authentication Required): put them "
            "in HTTPS_PROXY / HTTP_PROXY (http://user:password@host:port): nothing was pushed"
        )
    if first and (status is None or status in (502, 503, 504)):
        why = type(exc).__name__ if status is None else f"{status} from the proxy"
        return (
            f"{repo_id}: cannot reach the hub at {endpoint} through the proxy {proxy} ({why}): check the proxy "
            "and HTTPS_PROXY / HTTP_PROXY / NO_PROXY: nothing was pushed"
        )
    return None


def stale_files(api, repo_id: str, revision: str | None, files: list[Upload]) -> list[str]:
    """The hub's files in the folders this push replaces that it does not send again: deleted in its commit."""
    folders = push_files.replaced_folders(files)
    if not folders:
        return []
    sent = {f.path_in_repo for f in files}
    on_hub = api.list_repo_files(repo_id, revision=revision, repo_type="model")
    return sorted(p for p in on_hub if p.startswith(folders) and p not in sent)


def push(
    repo_id: str, files: list[Upload], *, private: bool = True, revision: str | None = None, message: str
) -> str:
    """Create the repo if needed and commit `files` to it (on `revision`); the repo's URL. Raises PushFailed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = get_token()  # only to search the files for it (push_files.check_no_secrets)
    push_files.check_no_secrets(files, token)
    if token is None:
        raise PushFailed(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)"
        )
    if hub.is_offline():
        raise PushFailed(
            f"{repo_id}: offline mode (HF_HUB_OFFLINE or no network at start): nothing was pushed"
        )
    api = HfApi()
    proxy = hub.proxy_for(api.endpoint)  # behind a proxy a direct probe fails: the client's errors decide
    if proxy is None and not hub.reachable(endpoint=api.endpoint):
        raise PushFailed(
            f"{repo_id}: cannot reach the hub at {api.endpoint} (no network?): nothing was pushed"
        )
    operations = [
        CommitOperationAdd(f.path_in_repo, f.source if isinstance(f.source, bytes) else str(f.source))
        for f in files
    ]
    url = None  # set once the hub has answered
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(url.repo_id, branch=revision, exist_ok=True)
        deletions = [CommitOperationDelete(p) for p in stale_files(api, url.repo_id, revision, files)]
        api.create_commit(
            url.repo_id, operations=deletions + operations, commit_message=message, revision=revision
        )
    except HfHubHTTPError as exc:
        raise PushFailed(
            proxy_problem(exc, repo_id, api.endpoint, proxy, url is None)
            or http_problem(exc, repo_id, revision)
        ) from None
    except OfflineModeIsEnabled:
        raise PushFailed(f"{repo_id}: offline mode (HF_HUB_OFFLINE): nothing was pushed") from None
    except network_errors() as exc:
        raise PushFailed(
            proxy_problem(exc, repo_id, api.endpoint, proxy, url is None)
            or f"{repo_id}: the connection to {api.endpoint} failed while pushing ({type(exc).__name__}): "
            "nothing was committed"
        ) from None
    return str(url) + (f"/tree/{revision}" if revision else "")


def check_repo_id(repo_id: str, where: str = "REPO_ID") -> None:
    if not HUB_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UserError(f"{where}: not a hub repo id: {repo_id!r} (expected name or org/name)")


def _size(files: list[Upload]) -> str:
    total = sum(len(f.source) if isinstance(f.source, bytes) else f.source.stat().st_size for f in files)
    return f"{total / 2**20:,.1f} MiB"


def push_command(
    output_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    merged: str | Path | None = None,
    gguf: str | Path | None = None,
    revision: str | None = None,
    checkpoints: bool = False,
    dry_run: bool = False,
) -> list[Upload]:
    """`finetune push`: the run's allow-listed files (and --merged/--gguf/--checkpoints) in one commit."""
    check_repo_id(repo_id)
    files = push_files.run_uploads(output_dir, merged=merged, gguf=gguf, checkpoints=checkpoints)
    note = push_files.card_note(files)
    if note:
        print(f"note: {note}")
    visibility = "public" if private is False else "private"
    if dry_run:
        from huggingface_hub import get_token

        push_files.check_no_secrets(files, get_token())
        for f in files:
            print(f"  {f.path_in_repo}")
        print(f"would push {len(files)} files ({_size(files)}) to {repo_id} ({visibility}); nothing was sent")
        return files
    url = push(
        repo_id, files, private=private is not False, revision=revision,
        message=f"finetune push of {Path(output_dir).resolve().name}",
    )  # fmt: skip
    print(f"pushed {len(files)} files ({_size(files)}) to {url} ({visibility} if created now)")
    return files
