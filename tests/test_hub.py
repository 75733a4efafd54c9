"""hub.py: without a network, a config that names hub ids switches to offline mode at once (no retries)."""

from __future__ import annotations

import os

import pytest

from finetune import config, hub


def make_cfg(tmp_path, base: str, data: str) -> config.Config:
    return config.validate({"base_model": base, "adapter": "lora", "datasets": [{"path": data}]})


@pytest.fixture()
def online_env(monkeypatch):
    """The user chose nothing; whatever offline_if_unreachable changes is undone after the test."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_offline", False)


def test_hub_ids_are_the_paths_that_are_not_local(tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "a", "output": "b"}\n')
    assert make_cfg(tmp_path, str(tiny_model_dir), str(rows)).hub_ids == []
    assert make_cfg(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", "org/finance-qa").hub_ids == [
        "meta-llama/Llama-3.1-8B-Instruct",
        "org/finance-qa",
    ]


def test_unreachable_hub_switches_to_offline_mode(tmp_path, monkeypatch, online_env):
    import huggingface_hub.constants

    monkeypatch.setattr(hub, "reachable", lambda timeout=hub.PROBE_SECONDS: False)
    note = hub.offline_if_unreachable(
        make_cfg(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", "org/qa").hub_ids
    )
    assert note.startswith("the Hugging Face hub cannot be reached (no network?): working offline")
    assert "'meta-llama/Llama-3.1-8B-Instruct' and the other hub ids must be in the local cache" in note
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # for child processes (torchrun ranks, dataset workers)
    assert hub.loader_kwargs() == {"local_files_only": True}
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # imported while online: told through its constant


def test_offline_loaders_fail_in_one_line_without_touching_the_network(tmp_path, monkeypatch, online_env):
    """After go_offline, a hub id that is not cached is refused at once: not one connection is attempted (no
    minute of retries), although the libraries were imported while online."""
    import socket

    from finetune.data.sources import load_sources
    from finetune.data.tokenizer import load_tokenizer
    from finetune.errors import UserError

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("a connection was attempted while offline")

    hub.go_offline()
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cfg = make_cfg(tmp_path, "finetune-tests/never-cached-model", "finetune-tests/never-cached-data")
    with pytest.raises(
        UserError, match="base_model: cannot load a tokenizer from 'finetune-tests/never-cached-model'"
    ):
        load_tokenizer(cfg)
    with pytest.raises(UserError, match="cannot load dataset 'finetune-tests/never-cached-data' \\(offline"):
        load_sources(cfg.datasets[0], "datasets[0]")
    assert attempts == []


def test_no_probe_when_local_offline_chosen_or_behind_a_proxy(
    tmp_path, tiny_model_dir, monkeypatch, online_env
):
    def probe(timeout=hub.PROBE_SECONDS):
        raise AssertionError("probed the network")

    monkeypatch.setattr(hub, "reachable", probe)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "a", "output": "b"}\n')
    assert hub.offline_if_unreachable(make_cfg(tmp_path, str(tiny_model_dir), str(rows)).hub_ids) is None
    remote = make_cfg(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", str(rows))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub.offline_if_unreachable(remote.hub_ids) is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_if_unreachable(remote.hub_ids) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "reachable", lambda timeout=hub.PROBE_SECONDS: True)
    assert hub.offline_if_unreachable(remote.hub_ids) is None and os.environ["HF_HUB_OFFLINE"] == "0"


def test_reachable_is_false_for_an_endpoint_that_refuses(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert hub.reachable(timeout=1) is False
