"""The Studio's API, through a real `finetune studio` process: who may talk to it, which paths it serves, how it
lists broken run folders, and a run it started surviving the Studio's death and being found again."""

from __future__ import annotations

import json
import os
import signal
import urllib.error

import pytest

from finetune.outputs import run_dir
from finetune.studio import detail, runs, security
from studio_server import Studio, make_root, status_of, wait_for


@pytest.fixture()
def root(tmp_path, tiny_model_dir):
    return make_root(tmp_path / "root", tiny_model_dir)


def refused(call) -> int:
    with pytest.raises(urllib.error.HTTPError) as info:
        call()
    return info.value.code


def test_off_loopback_every_request_needs_the_token(root):
    studio = Studio(root, host="0.0.0.0")  # no --token: one is generated and printed with the URL
    try:
        token = studio.token()
        assert token and f"?token={token}" in studio.banner
        assert refused(lambda: studio.get("/api/runs")) == 401
        assert refused(lambda: studio.get("/")) == 401
        assert refused(lambda: studio.get("/api/runs?token=wrong")) == 401
        assert studio.get("/api/runs", {"X-Studio-Token": token}).status == 200
        opened = studio.get(f"/?token={token}")  # the printed URL: the token becomes a cookie
        assert opened.status == 200 and token in opened.headers["set-cookie"]
        cookie = {"Cookie": f"{security.COOKIE}={token}"}
        assert studio.get("/api/runs", cookie).status == 200
    finally:
        studio.kill()


def test_loopback_changes_need_the_token_and_the_same_origin(root):
    studio = Studio(root)
    try:
        assert studio.get("/").status == 200  # reading on loopback needs no token
        assert refused(lambda: studio.get("/", {"Host": "evil.example:80"})) == 403  # DNS rebinding
        body = {"text": "base_model: x\n", "name": "a"}
        assert refused(lambda: studio.post("/api/validate", body, token=None)) == 403
        token = studio.page_token()
        evil = {"Origin": "http://evil.example"}
        assert refused(lambda: studio.post("/api/validate", body, token, evil)) == 403
        same = {"Origin": studio.url}
        assert studio.post("/api/validate", body, token, same).status == 200
    finally:
        studio.kill()


def test_paths_outside_the_root_are_refused(root, tmp_path):
    (tmp_path / "secret.yml").write_text("hf_token: hunter2\n")
    (root / "link").symlink_to(tmp_path)
    studio = Studio(root)
    try:
        for path in ("/api/file?path=../secret.yml", "/api/file?path=examples/../../secret.yml",
                     f"/api/file?path={tmp_path}/secret.yml", "/api/file?path=link/secret.yml",
                     "/run?name=..", "/api/run?name=../root"):  # fmt: skip
            assert refused(lambda p=path: studio.get(p)) in (400, 403), path
        assert b"quickstart" in studio.get("/api/file?path=examples/quickstart.yaml").read()
    finally:
        studio.kill()


def test_a_corrupt_run_folder_is_one_unreadable_row(root, trained_run):
    import shutil

    good = root / "outputs" / "good"
    shutil.copytree(trained_run, good)
    (root / "outputs" / "garbled").mkdir()
    (root / "outputs" / "garbled" / "config.yml").write_text("base_model: [unclosed\n  lora_r: 8\n")
    (root / "outputs" / "half" / "checkpoint-4").mkdir(parents=True)  # cut off before config.yml
    bad_json = root / "outputs" / "badjson"
    shutil.copytree(trained_run, bad_json)
    (bad_json / "all_results.json").write_text('{"global_step": 2')
    studio = Studio(root)
    try:
        rows = {r["name"]: r for r in studio.json("/api/runs")["runs"]}
        assert rows["outputs/good"]["status"] == "finished"
        assert rows["outputs/good"]["step"] == 20 and rows["outputs/good"]["train_loss"] is not None
        assert rows["outputs/garbled"]["status"] == "unreadable"
        assert "invalid YAML" in rows["outputs/garbled"]["reason"]
        assert (
            rows["outputs/half"]["status"] == "unreadable"
            and "no config.yml" in rows["outputs/half"]["reason"]
        )
        assert rows["outputs/badjson"]["status"] == "unreadable"
        assert "all_results.json" in rows["outputs/badjson"]["reason"]
        assert studio.get("/").status == 200  # the page lists them; no error page
        assert studio.get("/run?name=outputs/garbled").status == 200
        compare = studio.get("/compare?run=outputs/good&run=outputs/badjson").read().decode()
        assert "outputs/badjson" in compare
    finally:
        studio.kill()


def test_config_diff_keeps_only_keys_that_differ():
    diff = detail.config_diff({
        "a": {"lora_r": 8, "seed": 1, "datasets": [{"path": "x", "type": "alpaca"}], "finetune_versions": {"x": 1}},
        "b": {"lora_r": 16, "seed": 1, "datasets": [{"path": "y", "type": "alpaca"}], "finetune_versions": {"x": 2}},
    })  # fmt: skip
    assert diff == {"datasets.0.path": {"a": '"x"', "b": '"y"'}, "lora_r": {"a": "8", "b": "16"}}


def test_a_run_started_by_the_studio_outlives_it_and_is_found_again(root):
    text = (root / "examples" / "quickstart.yaml").read_text()
    text = text.replace("num_epochs: 3", "max_steps: 100000\nnum_epochs: 10000").replace(
        "saves_per_epoch: 1", ""
    )
    text = text.replace("evals_per_epoch: 1", "eval_strategy: 'no'").replace("val_set_size: 0.1", "")
    studio = Studio(root)
    token = studio.page_token()
    started = json.loads(studio.post("/api/start", {"text": text, "name": "long"}, token).read())
    assert started["run"] == "outputs/quickstart"
    assert (root / "configs" / "long.yml").read_text() == text
    name = started["run"]

    def step_now():
        state = runs.read_json(root / name / "status.json")
        return state.get("step", 0) if state.get("state") == "running" else 0

    try:
        wait_for(lambda: status_of(studio.json("/api/runs")["runs"], name) == "running", timeout=180)
        studio.kill()  # SIGKILL: the Studio is gone
        before = wait_for(step_now)
        wait_for(lambda: step_now() > before + 2)  # still training without the Studio
        pid = runs.read_json(root / name / "status.json")["pid"]
        assert runs.alive(pid)
        studio = Studio(root)  # a new Studio finds it by its heartbeat and reattaches
        assert status_of(studio.json("/api/runs")["runs"], name) == "running"
        run_state = studio.json(f"/api/run?name={name}")
        assert run_state["jobs"][0]["status"] == "running" and run_state["progress"]["step"] > 0
        # stop: a resumable checkpoint, as SIGTERM does
        studio.post(f"/api/action/stop?name={name}", {}, studio.page_token())
        wait_for(lambda: status_of(studio.json("/api/runs")["runs"], name) == "interrupted", timeout=120)
        assert run_dir.checkpoints(root / name)
        # the job ends once the training process has written its checkpoint and exited (just after the row)
        wait_for(lambda: studio.json(f"/api/run?name={name}")["jobs"][0]["status"] == "stopped", timeout=120)
    finally:
        studio.kill()
        state = runs.read_json(root / name / "status.json")
        if runs.alive(state.get("pid")):
            os.kill(state["pid"], signal.SIGKILL)
