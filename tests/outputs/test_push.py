"""`finetune push`: against a stand-in hub on 127.0.0.1 (tests/hub_standin.py), so huggingface_hub's real client
code runs — repo creation, preupload, the ndjson commit — and what reached the "hub" is checked file by file.

The command line runs as a user runs it (a new process, HF_ENDPOINT set before huggingface_hub is imported); the
finer cases call push_command in this process, with huggingface_hub.constants.ENDPOINT pointed at the stand-in
(the constant HF_ENDPOINT is read into at import).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from finetune import hub
from finetune.errors import UserError
from hub_standin import TOKEN, StandInHub

RUN_FILES = {
    "README.md", "adapter_config.json", "adapter_model.safetensors", "all_results.json", "chat_template.jinja",
    "config.yml", "eval_results.json", "loss.png", "tokenizer.json", "tokenizer_config.json",
    "train_results.json", "trainer_state.json",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def cli(*args, endpoint: str, token: str | None = TOKEN, home=None):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    for name in hub.PROXY_VARIABLES:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "finetune.cli", "push", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


# ---------------------------------------------------------------- the command line, as a user runs it


def test_push_uploads_the_allow_list_privately_without_the_token(run_copy, standin, tmp_path):
    (run_copy / ".env").write_text(f"HF_TOKEN={TOKEN}\n")  # things a run folder may hold that never go up
    (run_copy / "wandb").mkdir()
    (run_copy / "wandb" / "settings").write_text("x")
    (run_copy / "training_args.bin").write_bytes(b"pickle")
    (run_copy / "predictions_test.jsonl").write_text("{}\n")
    result = cli(run_copy, "me/adapter", endpoint=standin.url, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"pushed {len(RUN_FILES)} files" in result.stdout and "me/adapter" in result.stdout
    assert standin.repos["me/adapter"].private is True  # private by default
    assert len(standin.commits) == 1  # one commit: never half a push
    assert set(standin.commits[0].files) == RUN_FILES  # no checkpoint-*, metrics.jsonl, .env, wandb, pickle
    assert (
        standin.pushed("me/adapter")["adapter_model.safetensors"]
        == (run_copy / "adapter_model.safetensors").read_bytes()
    )
    assert standin.leaks(TOKEN) == []  # the token went in the Authorization header only
    # what the hub was asked, in order (huggingface_hub also asks for its agent registry: answered 404)
    assert [p for m, p in standin.requests if p not in standin.unknown] == [
        "/api/repos/create", "/api/validate-yaml", "/api/models/me/adapter/preupload/main",
        "/api/models/me/adapter/commit/main",
    ]  # fmt: skip
    assert set(standin.unknown) <= {"/api/agent-harnesses"}


def test_push_401_is_one_line_and_exit_2(run_copy, tmp_path):
    with StandInHub("hf_theRealToken") as other:  # accepts another token
        result = cli(run_copy, "me/adapter", endpoint=other.url, home=tmp_path)
        assert other.commits == []
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "me/adapter: the hub refused the token (401 Unauthorized): check HF_TOKEN or `hf auth login`"
    ]
    assert TOKEN not in result.stderr + result.stdout


def test_push_without_network_is_one_line_and_exit_2(run_copy, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(run_copy, "me/adapter", endpoint=url, home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"me/adapter: cannot reach the hub at {url} (no network?): nothing was pushed"
    ]


def test_push_without_a_token_is_one_line(run_copy, standin, tmp_path):
    result = cli(run_copy, "me/adapter", endpoint=standin.url, token=None, home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)"
    ]
    assert standin.requests == []


# ---------------------------------------------------------------- finer cases, in this process


def test_public_revision_and_checkpoints(hub_env, run_copy):
    from finetune.outputs.push import push_command

    push_command(run_copy, "org/adapter", private=False, revision="dev", checkpoints=True)
    assert hub_env.repos["org/adapter"].private is False
    assert ("POST", "/api/models/org/adapter/branch/dev") in hub_env.requests
    (commit,) = hub_env.commits
    assert commit.revision == "dev"
    ckpt = sorted(p.name for p in run_copy.iterdir() if p.name.startswith("checkpoint-"))
    assert ckpt and {f.split("/")[0] for f in commit.files if "/" in f} == set(ckpt)
    inside = {f.split("/", 1)[1] for f in commit.files if f.startswith(ckpt[-1] + "/")}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= inside
    assert "training_args.bin" not in inside and "README.md" not in inside


def test_merged_into_a_subfolder_and_gguf_at_the_top(hub_env, run_copy, tmp_path):
    from finetune.outputs.push import push_command

    merged, gguf = tmp_path / "merged", tmp_path / "gguf"
    merged.mkdir()
    gguf.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"):
        (merged / name).write_text(name)
    (merged / ".env").write_text("secret")
    (gguf / "run.Q8_0.gguf").write_bytes(b"GGUF")
    modelfile = (
        'FROM ./run.Q8_0.gguf\nTEMPLATE """[INST] {{ .Prompt }} [/INST]{{ .Response }}</s>"""\n'
        'SYSTEM """Rate news."""\nPARAMETER stop "</s>"\nPARAMETER temperature 0\n'
    )
    (gguf / "Modelfile").write_text(modelfile)
    (gguf / "notes.txt").write_text("x")
    push_command(run_copy, "me/all", merged=merged, gguf=gguf)
    pushed = hub_env.commits[0].files
    assert set(pushed) == RUN_FILES | {
        "merged/config.json", "merged/generation_config.json", "merged/model.safetensors",
        "merged/tokenizer.json", "merged/README.md", "run.Q8_0.gguf", "Modelfile", "template", "system", "params",
    }  # fmt: skip
    # what `ollama run hf.co/me/all` reads in place of the Modelfile (the hub's Ollama integration)
    assert pushed["template"] == b"[INST] {{ .Prompt }} [/INST]{{ .Response }}</s>"
    assert pushed["system"] == b"Rate news."
    assert json.loads(pushed["params"]) == {"stop": ["</s>"], "temperature": 0}
    push_command(merged, "me/merged")  # a merged folder as a repo of its own (vLLM, TGI): at the top
    assert set(hub_env.commits[1].files) == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md",
    }  # fmt: skip
    with pytest.raises(UserError, match="--gguf .*: no .gguf file there"):
        push_command(run_copy, "me/all", gguf=merged)
    with pytest.raises(UserError, match="--merged .*: no config.json there"):
        push_command(run_copy, "me/all", merged=gguf)


def test_card_names_the_hub_base(hub_env, run_copy):
    """A run on a hub base: the card pushed (rendered now when the folder has none) has base_model = the id."""
    import json

    from finetune.outputs.push import push_command

    cfg = yaml.safe_load((run_copy / "config.yml").read_text())
    cfg["base_model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (run_copy / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ("all_results.json", "train_results.json"):  # the run fact the card reads (run_dir.hub_base)
        results = json.loads((run_copy / name).read_text())
        (run_copy / name).write_text(json.dumps({**results, "base_model_local": False}))
    (run_copy / "README.md").unlink()
    push_command(run_copy, "me/adapter")
    card = hub_env.pushed("me/adapter")["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "peft"


def test_a_secret_in_a_file_is_refused_before_anything_is_sent(hub_env, run_copy):
    from finetune.outputs.push import push_command

    text = (run_copy / "config.yml").read_text()
    (run_copy / "config.yml").write_text(text + "comment: hf_" + "A" * 30 + "\n")
    line = text.count("\n") + 1
    with pytest.raises(UserError) as err:
        push_command(run_copy, "me/adapter")
    assert err.value.problems == [
        f"{run_copy / 'config.yml'}:{line}: holds a secret (an access token): nothing was pushed; remove it "
        "and push again"
    ]
    (run_copy / "config.yml").write_text(text)
    (run_copy / "trainer_state.json").write_text((run_copy / "trainer_state.json").read_text() + TOKEN)
    with pytest.raises(UserError, match="trainer_state.json:.*holds a secret"):
        push_command(run_copy, "me/adapter")  # the token in use, whatever its shape
    assert hub_env.requests == []


@pytest.mark.parametrize(
    "fail, message",
    [
        (
            {"create": 403},
            "me/x: no write access (403 Forbidden): use a token that may write to this namespace",
        ),
        ({"commit": 404}, "me/x: not found on the hub (404): check the repo id and the token's access"),
    ],
)
def test_hub_refusals_are_one_line(hub_env, run_copy, fail, message):
    from finetune.outputs.push import PushFailed, push_command

    hub_env.fail.update(fail)
    with pytest.raises(PushFailed) as err:
        push_command(run_copy, "me/x")
    assert err.value.problems == [message]


def test_a_dropped_connection_is_one_line(hub_env, run_copy):
    """The connection closes without an answer: huggingface_hub's HTTP client error is caught as a network
    failure (push.network_errors), not shown as a traceback."""
    from finetune.outputs.push import PushFailed, push_command

    hub_env.drop.add("create")
    with pytest.raises(PushFailed) as err:
        push_command(run_copy, "me/x")
    (line,) = err.value.problems
    assert line.startswith(f"me/x: the connection to {hub_env.url} failed while pushing (")
    assert line.endswith("): nothing was committed")


def test_not_a_run_folder(hub_env, tmp_path):
    from finetune.outputs.push import push_command

    with pytest.raises(UserError, match="no adapter_config.json or config.json here"):
        push_command(tmp_path, "me/x")
    with pytest.raises(UserError, match="REPO_ID: not a hub repo id: 'me/x/y'"):
        push_command(tmp_path, "me/x/y")


def test_a_bare_name_goes_to_the_token_owner_and_dry_run_sends_nothing(hub_env, run_copy, capsys):
    from finetune.outputs.push import push_command

    files = push_command(run_copy, "adapter", dry_run=True)
    assert {f.path_in_repo for f in files} == RUN_FILES and hub_env.requests == []
    assert "would push 12 files" in capsys.readouterr().out
    push_command(run_copy, "adapter")  # the hub puts a bare name in the token owner's namespace
    assert (
        hub_env.commits[0].repo == "standin-user/adapter"
        and set(hub_env.pushed("standin-user/adapter")) == RUN_FILES
    )
