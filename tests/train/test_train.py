# ruff: noqa: E402
"""`train.run` end to end on the tiny model: outputs, metrics, W&B offline, secrets, refusal, resume, smoke."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


from conftest import FINLORA, needs_shared, send_signal  # noqa: E402
from conftest import INST_FORMAT as PROMPT  # noqa: E402
from finetune import (
    config,
    train,  # noqa: E402
)
from finetune.errors import UserError  # noqa: E402
from finetune.train import checkpoints, smoke

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "examples" / "finance_qa.jsonl"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    """One tokenized-data cache for the module (it is keyed by content, so sharing is safe)."""
    return tmp_path_factory.mktemp("prepared")


def make_cfg(base, out, prepared, **over) -> config.Config:
    raw = {
        "base_model": str(base),
        "load_in_4bit": True,
        "adapter": "qlora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_linear": True,
        "datasets": [{"path": str(QA), "type": PROMPT}],
        "val_set_size": 4,
        "sequence_len": 256,
        "dataset_prepared_path": str(prepared),
        "dataset_processes": 1,
        "output_dir": str(out),
        "micro_batch_size": 4,
        "learning_rate": 0.01,
        "lr_scheduler": "constant",
        "logging_steps": 2,
        "seed": 7,
        **over,
    }
    return config.validate({k: v for k, v in raw.items() if v is not None})


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# ---------------------------------------------------------------- one full QLoRA run, inspected by several tests


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory, prepared_dir):
    """3 epochs of QLoRA over 44 rows (11 steps each): evaluates every 4 steps, logs every 2, saves every 5."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = make_cfg(
        tiny_model_dir, out, prepared_dir, num_epochs=3, eval_steps=4, save_steps=5, logging_steps=3
    )
    torch.set_num_threads(1)
    train.run(cfg)
    return cfg, out


def test_outputs_are_complete(finished):
    cfg, out = finished
    for name in (
        "adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yml", "trainer_state.json",
        "train_results.json", "all_results.json", "eval_results.json", "metrics.jsonl", "loss.png", "README.md",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        not (out / "wandb").exists() and not (out / "training_args.bin").exists()
    )  # no W&B settings: no W&B
    saved = config.load(out / "config.yml")  # the resolved config loads back to the same run
    assert saved.finetune_versions["transformers"]
    assert saved.model_copy(update={"finetune_versions": None}) == cfg
    assert not list(out.glob(".*tmp")) and not list(out.glob(".final-*"))  # no temp leftovers
    assert [p.name for p in checkpoints.checkpoints(out)] == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-25", "checkpoint-30", "checkpoint-33"]  # fmt: skip
    for ckpt in checkpoints.checkpoints(out):
        assert checkpoints.problem(ckpt) is None
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"} <= {
            p.name for p in ckpt.iterdir()
        }


def test_metrics_losses_and_tokens(finished):
    _, out = finished
    state = json.loads((out / "trainer_state.json").read_text())
    history = state["log_history"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    # a training loss is logged at every evaluation step, though logging_steps (3) does not divide eval_steps (4)
    evals = [e["step"] for e in history if "eval_loss" in e]
    assert evals == [4, 8, 12, 16, 20, 24, 28, 32, 33]
    logged = {e["step"] for e in history if "loss" in e}
    assert set(evals) <= logged
    # loss goes down: last epoch vs first epoch
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    first = [v for s, v in losses if s <= 11]
    last = [v for s, v in losses if s > 22]
    assert sum(last) / len(last) < sum(first) / len(first) - 0.05

    results = json.loads((out / "all_results.json").read_text())
    assert results["train_tokens"] == 3 * results["data"]["tokens"]  # 3 epochs of real (non-pad) tokens
    assert results["train_tokens_per_second"] > 0
    assert results["peak_cpu_memory_mb"] > 0
    assert (
        results["final_eval_loss"] == history[-2]["eval_loss"]
        or results["final_eval_loss"] == results["eval_loss"]
    )
    assert results["global_step"] == 33 and results["world_size"] == 1


def test_adapter_loads_and_changes_logits(finished, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = finished
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    x = tok(["[INST] What is liquidity? [/INST]"], return_tensors="pt")
    with torch.no_grad():
        before = base(**x).logits
        after = PeftModel.from_pretrained(base, out)(**x).logits
    assert (after - before).abs().max() > 1e-2


# ---------------------------------------------------------------- other bases, tracking, safety


@pytest.mark.parametrize(
    "settings",
    [
        {"load_in_4bit": False, "load_in_8bit": True, "adapter": "lora"},
        {"load_in_4bit": False, "adapter": "lora"},
        # axolotl's bf16 base without mixed precision (4-bit compute in bf16 on CPU), a config override, one
        # adapted layer, batches built in a worker process
        {"bfloat16": True, "model_config": {"rms_norm_eps": 1e-3}, "peft_layers_to_transform": [0],
         "dataloader_num_workers": 1},
    ],
)  # fmt: skip
def test_other_bases_and_axolotl_extras_train(tiny_model_dir, tmp_path, prepared_dir, settings):
    out = tmp_path / "out"
    train.run(make_cfg(tiny_model_dir, out, prepared_dir, max_steps=2, val_set_size=0, **settings))
    assert any(v.abs().sum() > 0 for k, v in adapter_weights(out).items() if "lora_B" in k)
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 2
    layers = json.loads((out / "adapter_config.json").read_text())["layers_to_transform"]
    assert layers == settings.get("peft_layers_to_transform")


def test_loss_watchdog_stops_the_run_and_says_why(tiny_model_dir, tmp_path, prepared_dir, capsys):
    """loss_watchdog_threshold below any loss the tiny model reaches: 2 logged steps above it, then stop."""
    out = tmp_path / "out"
    cfg = make_cfg(
        tiny_model_dir, out, prepared_dir, max_steps=8, logging_steps=1, val_set_size=0,
        loss_watchdog_threshold=0.001, loss_watchdog_patience=2,
    )  # fmt: skip
    train.run(cfg)
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 2
    assert (out / "adapter_model.safetensors").is_file()  # what was trained is still saved
    assert (
        "stopped early at step 2 of 8: loss_watchdog_threshold: the training loss stayed above 0.001 for 2 "
        "logged steps in a row" in capsys.readouterr().err
    )


def test_online_wandb_without_an_api_key_is_refused_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings with a key
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "out"
    cfg = make_cfg(tiny_model_dir, out, tmp_path / "prepared", wandb_project="finlora")
    try:
        with pytest.raises(
            UserError, match=r"^wandb_project: W&B has no API key on this machine: run `wandb"
        ):
            train.run(cfg)
    finally:
        import wandb

        wandb.teardown()  # wandb keeps process-wide settings read from this test's environment
    assert not out.exists() and not (tmp_path / "prepared").exists()  # refused before anything was written


def test_wandb_offline_records_the_run_and_no_secret_leaks(
    tiny_model_dir, tmp_path, prepared_dir, monkeypatch, capfd
):
    secrets = {"WANDB_API_KEY": "planted-wandb-" + "k" * 28, "HF_TOKEN": "hf_planted" + "x" * 30}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "out"
    cfg = make_cfg(
        tiny_model_dir,
        out,
        prepared_dir,
        max_steps=3,
        eval_steps=2,
        wandb_project="finetune-tests",
        wandb_name="tiny-offline",
    )
    train.run(cfg)

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (record,) = runs[0].glob("run-*.wandb")  # wandb 0.31 has no Python reader; its protobuf keeps strings raw
    recorded = record.read_bytes()
    for _ in range(40):  # seen once on a loaded machine: wandb-core still writing after finish() returned
        if b"final_train_loss" in recorded:
            break
        time.sleep(0.5)
        recorded = record.read_bytes()
    for expected in (
        b"finetune-tests",
        b"tiny-offline",
        b"lora_target_linear",
        b"train/loss",
        b"eval/loss",
        b"final_train_loss",
    ):
        assert expected in recorded, expected  # project, run name, our resolved config, metrics, summary

    printed = capfd.readouterr()
    for value in secrets.values():
        assert value not in printed.out + printed.err
        for path in [*out.rglob("*"), *Path(prepared_dir).rglob("*")]:
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path


def test_existing_output_dir_is_refused(tiny_model_dir, tmp_path, prepared_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(UserError, match="--overwrite"):
        train.run(make_cfg(tiny_model_dir, out, prepared_dir))
    with pytest.raises(UserError, match="contradict"):
        train.run(make_cfg(tiny_model_dir, out, prepared_dir), overwrite=True, resume=True)
    assert (out / "keep.txt").read_text() == "earlier work"


# ---------------------------------------------------------------- interruption and resume


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tiny_model_dir, tmp_path, prepared_dir, capsys):
    settings = {"max_steps": 7, "save_steps": 4, "lora_dropout": 0.1, "val_set_size": 0}
    straight = tmp_path / "straight"
    train.run(make_cfg(tiny_model_dir, straight, prepared_dir, **settings))

    out = tmp_path / "interrupted"
    cfg = make_cfg(tiny_model_dir, out, prepared_dir, **settings)
    with pytest.raises(SystemExit) as stopped:
        train.run(cfg, callbacks=[send_signal(2)])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "Resume with:" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are given back
    assert [p.name for p in checkpoints.checkpoints(out)] == ["checkpoint-3"]  # the step under way finished
    assert not (out / "adapter_model.safetensors").exists()

    # a newer checkpoint cut off while saving (as kill -9 would leave it) must be skipped
    cut = out / "checkpoint-5"
    shutil.copytree(out / "checkpoint-3", cut)
    (cut / "trainer_state.json").unlink()
    data = (cut / "optimizer.pt").read_bytes()
    (cut / "optimizer.pt").write_bytes(data[: len(data) // 2])

    with pytest.raises(UserError, match="--overwrite"):
        train.run(cfg)  # not without --resume
    train.run(cfg, resume=True)
    err = capsys.readouterr().err
    assert "skipping" in err and "resuming from" in err and "differs" not in err
    assert (out / ".incomplete-checkpoint-5").is_dir()
    a, b = adapter_weights(straight), adapter_weights(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 7


def test_overwrite_starts_from_an_empty_folder(tmp_path, finished, prepared_dir, tiny_model_dir, capsys):
    """An interrupted --overwrite run leaves no file of the old run for the card (or merge) to mix in."""
    from finetune.outputs import card, run_dir

    _, finished_out = finished
    out = tmp_path / "out"
    shutil.copytree(finished_out, out)  # the old run: r=8, 33 steps, final adapter, results, card
    cfg = make_cfg(tiny_model_dir, out, prepared_dir, lora_r=4, num_epochs=300, save_steps=50, val_set_size=0)
    with pytest.raises(SystemExit):
        train.run(cfg, overwrite=True, callbacks=[send_signal(2)])
    (ckpt,) = checkpoints.checkpoints(out)  # the step under way when the signal came
    assert sorted(p.name for p in out.iterdir()) == [ckpt.name, "config.yml", "metrics.jsonl", "status.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old run is gone, not left beside it
    assert run_dir.read_run(out).adapter["r"] == 4
    text = Path(card.write_card(out)).read_text()
    steps = ckpt.name.split("-")[1]
    assert "- lora_r: 4\n" in text and f"300 epochs ({steps} optimizer steps)" in text
    capsys.readouterr()


def test_overwrite_that_fails_before_training_keeps_the_old_run(
    tmp_path, finished, prepared_dir, tiny_model_dir
):
    """Nothing of the old run is touched until the new one has its data and model and starts writing."""
    _, finished_out = finished
    out = tmp_path / "out"
    shutil.copytree(finished_out, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "q", "target": "a"}\n{"context": \n')
    cfg = make_cfg(tiny_model_dir, out, prepared_dir, datasets=[{"path": str(bad), "type": PROMPT}])
    with pytest.raises(UserError, match="bad.jsonl"):
        train.run(cfg, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out"]
    resumed = make_cfg(tiny_model_dir, out, prepared_dir, resume_from_checkpoint=str(out / "checkpoint-5"))
    with pytest.raises(UserError, match="resume_from_checkpoint.*--overwrite"):
        train.run(resumed, overwrite=True)  # it would continue from a folder that --overwrite replaces
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_overwrite_refuses_at_once_what_it_could_not_replace(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    monkeypatch.chdir(out / "sub")
    with pytest.raises(UserError, match="the current folder is inside it"):
        checkpoints.check_can_replace(out, None)
    monkeypatch.chdir(tmp_path)
    checkpoints.check_can_replace(out, None)
    checkpoints.check_can_replace(out, str(tmp_path / "other" / "checkpoint-5"))  # from another run: fine
    with pytest.raises(UserError, match="inside output_dir"):
        checkpoints.check_can_replace(out, str(out / "checkpoint-5"))


def test_checkpoint_problems_are_named(tmp_path, finished):
    _, out = finished
    good = out / "checkpoint-5"
    cases = {
        "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
        "trainer_state.json is cut off": lambda c: (c / "trainer_state.json").write_text('{"global_st'),
        "adapter_model.safetensors is cut off": lambda c: _truncate(c / "adapter_model.safetensors"),
        "scheduler.pt is cut off": lambda c: _truncate(c / "scheduler.pt"),
        "no optimizer state": lambda c: (c / "optimizer.pt").unlink(),
    }
    for i, (why, damage) in enumerate(cases.items()):
        ckpt = tmp_path / f"run{i}" / "checkpoint-9"
        shutil.copytree(good, ckpt)
        shutil.copytree(good, ckpt.with_name("checkpoint-4"))
        damage(ckpt)
        assert why in checkpoints.problem(ckpt)
        assert checkpoints.last_complete(ckpt.parent, warn=lambda m: None).name == "checkpoint-4"
    with pytest.raises(UserError, match="no complete checkpoint"):
        checkpoints.resume_point(tmp_path / "empty", None, resume=True, auto=False)
    assert checkpoints.resume_point(tmp_path / "empty", None, resume=False, auto=True) is None


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- smoke runs and the real recipe


@needs_shared
def test_financebench_smoke(monkeypatch, tmp_path, capsys):
    import tempfile

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = config.load(
        ROOT / "configs" / "financebench.yaml", [f"datasets.0.path={FINLORA / 'financebench_train.jsonl'}"]
    )
    out = train.run(cfg, smoke=True)
    assert out.is_relative_to(tmp_path)
    assert (out / "adapter_model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "meta-llama/Llama-3.1-8B-Instruct -> a tiny random Llama" in err
    assert "deepspeed is off" in err and "W&B is off" in err
    assert json.loads((out / "all_results.json").read_text())["global_step"] == smoke.SMOKE_STEPS


# FinLoRA's lora/finetune.py writes its 4-bit runs from the same template with these keys
FINLORA_4BIT = [
    "load_in_8bit=false", "load_in_4bit=true", "bnb_4bit_use_double_quant=true", "bnb_4bit_quant_type=nf4",
    "bnb_4bit_compute_dtype=bfloat16", "optimizer=paged_adamw_8bit", "gradient_checkpointing=true",
]  # fmt: skip


@needs_shared
@pytest.mark.parametrize("bits", [8, 4])
def test_finlora_example_config_smoke_is_quick_and_quiet(monkeypatch, tmp_path, capfd, bits):
    """FinLoRA's own config: 8-bit, sequence_len 16384 with pad_to_sequence_len, deepspeed, chat_template; and
    the 4-bit variant its script writes."""
    import tempfile

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    overrides = [f"datasets.0.path={FINLORA / 'formula_train.jsonl'}", *(FINLORA_4BIT if bits == 4 else [])]
    cfg = config.load(FINLORA / "example_config.yml", overrides)
    out = train.run(cfg, smoke=True)
    assert json.loads((out / "all_results.json").read_text())["global_step"] == smoke.SMOKE_STEPS
    err = capfd.readouterr().err
    assert "pad_to_sequence_len is off (rows are not padded to 16,384 tokens)" in err
    assert f"({bits}-bit)" in err
    assert err.count("MatMul8bitLt: inputs will be cast") <= 1  # bitsandbytes says it on every layer and step
    assert "unable to detect" not in err  # DeepSpeed's accelerator warning on a CPU-only machine
    assert "Paged optimizers are not supported" not in err  # said once, as a note


@needs_shared
def test_financebench_with_deepspeed_in_one_plain_process(tiny_model_dir, tmp_path):
    """A plain `finetune train` with a DeepSpeed config runs as a one-process group, with adamw_bnb_8bit on CPU."""
    out = tmp_path / "out"
    sets = {
        "base_model": tiny_model_dir, "datasets.0.path": FINLORA / "financebench_train.jsonl", "max_steps": 2,
        "micro_batch_size": 1, "gradient_accumulation_steps": 2, "output_dir": out,
        "dataset_prepared_path": tmp_path / "prepared", "wandb_project": "null", "dataset_processes": 1,
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "finetune.cli", "train", "configs/financebench.yaml"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "one-process group" in done.stderr
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 2 and results["distributed_type"] == "deepspeed"
    assert (out / "adapter_model.safetensors").is_file()


def test_resume_config_drift_and_overwrite_cleanup(tiny_model_dir, tmp_path, prepared_dir):
    from finetune.outputs import run_files as outputs

    out = tmp_path / "out"
    cfg = make_cfg(tiny_model_dir, out, prepared_dir)
    outputs.write_config(cfg, out)
    assert checkpoints.changed_keys(cfg, out / "config.yml") == []
    drifted = cfg.model_copy(update={"lora_r": 16, "learning_rate": 0.1})
    assert checkpoints.changed_keys(drifted, out / "config.yml") == ["learning_rate", "lora_r"]

    (out / "checkpoint-3").mkdir()
    (out / ".incomplete-checkpoint-5").mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    checkpoints.begin_output(out, replace=False, is_main=True)  # --resume: everything stays
    assert len(list(out.iterdir())) == 4
    link = tmp_path / "link"
    link.symlink_to(out)
    checkpoints.begin_output(link, replace=True, is_main=True)  # --overwrite: an empty folder, nothing beside
    assert link.is_symlink() and out.is_dir() and not list(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out"]


def test_peak_memory_is_this_programs_not_its_parents():
    """ru_maxrss survives fork + exec on Linux: a child of a 1.5 GiB process would report 1.5 GiB."""
    import subprocess
    import sys

    ballast = bytearray(1536 << 20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # resident, not just reserved
    code = "from finetune.outputs.run_files import peak_rss_mib; print(peak_rss_mib())"
    child = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    del ballast
    assert 0 < child < 1024
