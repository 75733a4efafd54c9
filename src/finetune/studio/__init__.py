"""`finetune studio`: a local web page over the stages — runs, a run's live progress, a config editor with the
plan, and a playground — that reads run folders and starts work through the `finetune` CLI.

    finetune studio --root ~/runs            # http://127.0.0.1:7860/

Nothing here computes what a stage computes: validation is `config.load`, the plan is `plan.report.make_plan`,
the data preview is `data.prepare`, the playground is `inference.generate`, and every action (train, resume,
eval, merge, export, push) is the CLI command the page shows, started as its own process (`jobs`). Only the
command in `cli.py` imports this package; importing it loads no torch (the playground loads a model on demand).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from finetune.errors import UserError
from finetune.studio import security


def serve(root: Path, host: str = "127.0.0.1", port: int = 7860, token: str | None = None) -> None:
    """Serve the Studio for `root` until Ctrl-C. Off loopback a token is required: generated when not given,
    and printed with the URL. The process works in root, so a config's relative paths mean what they mean
    to `finetune train` started there."""
    try:
        import uvicorn

        from finetune.studio.app import create_app  # starlette: the studio extra
    except ImportError as exc:
        raise UserError(
            f"finetune studio needs the studio extra ({exc.name} is missing): pip install 'finetune[studio]'"
        ) from None
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"--root: {root} is not a folder")
    loopback = security.is_loopback(host)
    token = token or security.new_token()
    os.chdir(root)
    app = create_app(root, host, token, device=_device())
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + ("" if loopback else f"?token={token}")
    print(f"finetune studio: {root} at {url}", file=sys.stderr, flush=True)
    if not loopback:
        print(
            "token required off loopback: open the URL above (it sets a cookie)", file=sys.stderr, flush=True
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _device() -> str:
    """The device runs queue for: the GPU (nvidia-smi's first) or the CPU; one training at a time on it."""
    return "cuda:0" if Path("/dev/nvidiactl").exists() else "cpu"
