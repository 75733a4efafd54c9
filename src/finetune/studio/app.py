"""The Studio's HTTP side (Starlette): pages, a JSON API, server-sent events for live state, and the rules of
`security` in front of all of it. Every answer is computed from the files under the root at request time, so
two browsers (or a restarted Studio) see the same state."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from finetune.studio import detail, editor, pages, runs, security
from finetune.studio.jobs import Jobs
from finetune.studio.playground import Playground

ASSETS = Path(__file__).parent / "assets"


class Guard:
    """ASGI middleware: security.check on every request; `?token=` becomes a cookie."""

    def __init__(self, app, bound_host: str, token: str):
        self.app, self.bound_host, self.token = app, bound_host, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = (
            request.headers.get(security.HEADER)
            or request.query_params.get("token")
            or request.cookies.get(security.COOKIE)
        )
        try:
            security.check(
                bound_host=self.bound_host, token=self.token, method=request.method,
                host_header=request.headers.get("host", ""), origin=request.headers.get("origin"), given=given,
            )  # fmt: skip
        except security.Refused as exc:
            return await PlainTextResponse(exc.message, status_code=exc.status)(scope, receive, send)
        set_cookie = request.query_params.get("token") == self.token

        async def send_with_cookie(message):
            if set_cookie and message["type"] == "http.response.start":
                cookie = f"{security.COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def create_app(
    root: Path, bound_host: str = "127.0.0.1", token: str | None = None, device: str | None = None
):
    """The Studio for `root` (paths in configs resolve against the current folder: `serve` moves to root)."""
    root = Path(root).resolve()
    token = token or security.new_token()
    index = runs.RunIndex(root)
    jobs = Jobs(root, device or "cpu")
    playground = Playground()

    def run_folder(request: Request) -> Path:
        folder = security.inside(root, request.query_params.get("name", ""))
        queued = jobs.for_run(folder.relative_to(root).as_posix())  # a queued run has no folder yet
        if not folder.is_dir() and not queued:
            raise security.Refused(404, f"no run {request.query_params.get('name')!r} under the root")
        return folder

    def listing() -> dict:
        rows = index.rows()
        jobs.tick([r.name for r in rows if r.status == "running"])
        return {"runs": [r.as_json() for r in rows], "jobs": [j.as_json() for j in jobs.all()]}

    def run_state(folder: Path) -> dict:
        name = folder.relative_to(root).as_posix()
        row = runs.summarise(root, folder)
        entries = detail.metrics(folder)
        run_jobs = jobs.for_run(name)
        jobs.tick([name] if row.status == "running" else [])
        if row.status != "running" and any(
            j.status == "running" and j.kind in Jobs.TRAINING for j in run_jobs
        ):
            row.status = "starting"  # the job runs; training has not begun writing its heartbeat yet
        if any(j.status == "queued" and j.kind in Jobs.TRAINING for j in run_jobs):
            row.status = "queued" if row.status != "running" else row.status
        return {
            "row": row.as_json(),
            "progress": detail.progress(row, entries),
            "curves": detail.curves(entries),
            "jobs": [{**j.as_json(), "log": jobs.log(j, 4000)} for j in run_jobs],
            "files": files_of(folder),  # live too: the card and results appear when training or an eval ends
        }

    def files_of(folder: Path) -> dict:
        return {
            "config": detail.text_file(folder, "config.yml"),
            "card": pages.markdown(detail.text_file(folder, "README.md")),
            "evals": detail.eval_results(folder),
            "predictions": detail.prediction_files(folder),
        }

    async def guarded(handler, request: Request):
        try:
            return await handler(request)
        except security.Refused as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    def route(path: str, methods=("GET",)):
        def wrap(handler):
            async def endpoint(request):
                return await guarded(handler, request)

            return Route(path, endpoint, methods=list(methods))

        return wrap

    page = lambda name, **kw: HTMLResponse(pages.render(name, token=token, **kw))  # noqa: E731

    # ------------------------------------------------------------------ pages
    async def home(request):
        return page("runs", data=await asyncio.to_thread(listing))

    async def run_page(request):
        folder = run_folder(request)
        info = {"name": folder.relative_to(root).as_posix()}
        return page("run", run=info, state=await asyncio.to_thread(run_state, folder))

    async def new_page(request):
        start = request.query_params.get("from", "")
        text = security.inside(root, start).read_text(encoding="utf-8") if start else ""
        names = [r.name for r in index.rows() if r.status != "unreadable"]
        return page("new", text=text, start=start, starts=editor.starting_points(root, names))

    async def compare_page(request):
        names = request.query_params.getlist("run")
        folders = [security.inside(root, n) for n in names]
        configs, rows, series = {}, [], {}
        for name, folder in zip(names, folders, strict=True):
            rows.append(runs.summarise(root, folder).as_json())
            try:
                configs[name] = runs.read_config(folder)
            except ValueError:
                configs[name] = {}
            series[name] = detail.curves(detail.metrics(folder)).get("loss", [])
        data = {"rows": rows, "diff": detail.config_diff(configs), "series": series}
        return page("compare", data=data)

    async def playground_page(request):
        names = [r.name for r in index.rows() if r.status in ("finished", "interrupted")]
        return page("playground", runs=names)

    # ------------------------------------------------------------------ API: reading
    async def api_runs(request):
        return JSONResponse(await asyncio.to_thread(listing))

    async def api_run(request):
        return JSONResponse(await asyncio.to_thread(run_state, run_folder(request)))

    async def api_file(request):
        return PlainTextResponse(
            security.inside(root, request.query_params.get("path", "")).read_text("utf-8")
        )

    async def api_predictions(request):
        folder = run_folder(request)
        rows = detail.predictions(folder, request.query_params.get("file", ""), limit=0)
        return JSONResponse({"rows": rows[:200], "confusion": detail.confusion(rows)})

    async def api_job(request):
        job = jobs.get(request.query_params.get("id", ""))
        if job is None:
            raise security.Refused(404, "no such job")
        return JSONResponse({**job.as_json(), "log": jobs.log(job)})

    async def events(request):
        """Server-sent events: the run's state (or the runs list) whenever it changes, checked every second."""
        folder = run_folder(request) if request.query_params.get("name") else None

        async def stream():
            last = None
            while not await request.is_disconnected():
                state = (
                    await asyncio.to_thread(run_state, folder) if folder else await asyncio.to_thread(listing)
                )
                text = json.dumps(state, sort_keys=True, default=str)
                if text != last:
                    last = text
                    yield f"data: {text}\n\n"
                else:
                    yield ": keep-alive\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # ------------------------------------------------------------------ API: the editor
    async def api_validate(request):
        body = await request.json()
        source = f"configs/{body.get('name') or 'new'}.yml"
        cfg, problems = await asyncio.to_thread(editor.messages, body.get("text", ""), source)
        return JSONResponse({"ok": cfg is not None, "problems": problems})

    async def api_plan(request):
        body = await request.json()
        cfg, problems = await asyncio.to_thread(editor.messages, body.get("text", ""), "config")
        if cfg is None:
            return JSONResponse({"error": problems[0]["message"]})
        gpus = int(body.get("gpus") or 1)
        return JSONResponse(await asyncio.to_thread(editor.plan, cfg, body.get("device") or None, gpus))

    async def api_preview(request):
        body = await request.json()
        cfg, problems = await asyncio.to_thread(editor.messages, body.get("text", ""), "config")
        if cfg is None:
            return JSONResponse({"error": problems[0]["message"]})
        return JSONResponse(await asyncio.to_thread(editor.preview, cfg))

    async def api_start(request):
        body = await request.json()
        config_path, run = editor.save_for_start(root, str(body.get("name", "")), body.get("text", ""))
        job = jobs.add("train", ["train", config_path], run)
        return JSONResponse({"job": job.as_json(), "run": run})

    # ------------------------------------------------------------------ API: a run's actions
    async def api_action(request):
        folder = run_folder(request)
        name = folder.relative_to(root).as_posix()
        action = request.path_params["action"]
        body = await request.json() if request.headers.get("content-length", "0") != "0" else {}
        if action == "stop":
            return JSONResponse({"stopped": stop(folder, name)})
        if action == "resume":
            train_jobs = [j for j in jobs.for_run(name) if j.kind == "train"]
            config_path = train_jobs[-1].args[1] if train_jobs else f"{name}/config.yml"
            return JSONResponse(
                {"job": jobs.add("resume", ["train", config_path, "--resume"], name).as_json()}
            )
        if action == "export":
            quant = body.get("quant", "q8_0")
            out = f"exports/{folder.name}-{quant}"
            security.inside(root, out)
            args = ["export", name, "--gguf", "--quant", quant, "--out", out, "--overwrite"]
            return JSONResponse({"job": jobs.add("export", args, name).as_json(), "out": out})
        if action == "merge":
            out = f"merged/{folder.name}"
            return JSONResponse(
                {"job": jobs.add("merge", ["merge", name, "--out", out, "--overwrite"], name).as_json()}
            )
        if action == "eval":
            data = security.inside(root, str(body.get("data", ""))).relative_to(root).as_posix()
            return JSONResponse({"job": jobs.add("eval", ["eval", name, "--data", data], name).as_json()})
        if action == "push":
            repo = str(body.get("repo", ""))
            if not editor.NAME.match(repo.replace("/", "-")):
                raise security.Refused(400, f"repo {repo!r}: owner/name")
            args = ["push", name, repo] + ([] if body.get("confirm") else ["--dry-run"])
            return JSONResponse({"job": jobs.add("push", args, name).as_json()})
        raise security.Refused(404, f"no action {action!r}")

    def stop(folder: Path, name: str) -> bool:
        """SIGTERM to the training (its own checkpoint-and-stop), through its job's runner or its heartbeat pid."""
        for job in reversed(jobs.for_run(name)):
            if job.kind in Jobs.TRAINING and job.status == "running":
                return jobs.stop(job)
            if job.kind in Jobs.TRAINING and job.status == "queued":
                return jobs.cancel(job.id)
        pid = runs.read_json(folder / "status.json").get("pid")
        if runs.alive(pid):
            os.kill(pid, signal.SIGTERM)
            return True
        return False

    async def api_cancel(request):
        return JSONResponse({"cancelled": jobs.cancel(request.query_params.get("id", ""))})

    async def api_chat(request):
        body = await request.json()
        target = str(body.get("run", ""))
        folder = security.inside(root, target)
        settings = (
            str(body.get("prompt", "")), body.get("system") or None, int(body.get("max_new_tokens") or 128),
            float(body.get("temperature") or 0.0),
        )  # fmt: skip
        pieces = playground.stream(folder, bool(body.get("base")), *settings)
        return StreamingResponse(pieces, media_type="text/plain; charset=utf-8")

    async def health(request):
        # torch_loaded: the Studio starts and lists without torch (the playground and preview load it on demand)
        return JSONResponse(
            {"ok": True, "root": str(root), "time": time.time(), "torch_loaded": "torch" in sys.modules}
        )

    routes = [
        route("/")(home), route("/run")(run_page), route("/new")(new_page), route("/compare")(compare_page),
        route("/playground")(playground_page), route("/api/runs")(api_runs), route("/api/run")(api_run),
        route("/api/file")(api_file), route("/api/predictions")(api_predictions), route("/api/job")(api_job),
        route("/api/events")(events), route("/api/validate", ["POST"])(api_validate),
        route("/api/plan", ["POST"])(api_plan), route("/api/preview", ["POST"])(api_preview),
        route("/api/start", ["POST"])(api_start), route("/api/action/{action}", ["POST"])(api_action),
        route("/api/cancel", ["POST"])(api_cancel), route("/api/chat", ["POST"])(api_chat),
        route("/api/health")(health), Mount("/assets", StaticFiles(directory=ASSETS), name="assets"),
    ]  # fmt: skip
    app = Starlette(routes=routes)
    return Guard(app, bound_host, token)
