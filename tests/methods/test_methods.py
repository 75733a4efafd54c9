"""The method table (finetune.methods): no stage branches on the method outside it, and a method added to the
table alone validates, prepares data, trains on the tiny model and gets a card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import INST_FORMAT, one_thread_run, sentiment_rows
from finetune import config, methods
from test_layers import LINT, lint, planted

SRC = Path(__file__).resolve().parents[2] / "src" / "finetune"
# The config attributes that name the method; a dotted module path (finetune.train.preference) is no use of them.
METHOD_ATTRIBUTE = re.compile(r"([\w.]*)\.(preference|online_rl|reward_model|rl)\b")


def test_only_the_method_table_reads_the_method_keys():
    """`cfg.rl`, `cfg.reward_model` (and the former `cfg.preference` / `cfg.online_rl`) are read in
    finetune/methods/ only: every other module asks the table."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "methods":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in METHOD_ATTRIBUTE.finditer(code):
                if not match.group(1).startswith("finetune."):
                    found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert found == []


def test_the_grep_sees_a_method_branch():
    """The pattern above finds the uses it is meant to forbid (and not module paths)."""
    assert METHOD_ATTRIBUTE.search("    if cfg.rl == 'kto':")
    assert METHOD_ATTRIBUTE.search("return run.cfg.reward_model and x")
    assert METHOD_ATTRIBUTE.search("if cfg.preference or cfg.online_rl:")
    hit = METHOD_ATTRIBUTE.search("from finetune.train.preference import build_trainer")
    assert hit and hit.group(1).startswith("finetune.")


def test_the_table_holds_seven_methods_and_the_keys_each_selects(tiny_model_dir, tmp_path, write_config):
    """Each method is selected by its key; keys that belong to another method are refused at the key."""
    assert [m.name for m in methods.table()] == ["reward", "dpo", "kto", "orpo", "simpo", "grpo", "sft"]
    assert methods.named("reward-model") is methods.REWARD
    with pytest.raises(ValueError, match="rows must be one of"):  # a record the data stage could not build
        methods.Method(name="x", title="x", trainer=print, key="rl", value="x", rows="tokens")
    with pytest.raises(ValueError, match="already in the table"), methods.register(methods.DPO):
        pass
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    base = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": [{"path": str(tmp_path / "x.jsonl")}],
    }
    for method in methods.table():
        cfg = config.Config.model_validate({**base, **({method.key: method.value} if method.key else {})})
        assert methods.of(cfg) is method and cfg.training_kind == method.name
    with pytest.raises(config.ConfigError) as exc:
        config.load(write_config({**base, "rl": "orpo", "dpo_loss_type": "ipo", "trl": {"beta": 0.1}}))
    assert [p.split(": ", 1)[1] for p in exc.value.problems] == [
        "dpo_loss_type: only used by rl: dpo: set rl: dpo or remove it",
        "trl: only used by rl: grpo: set rl: grpo or remove it",
    ]


# ---------------------------------------------------------------- a toy method, registered in the table only

CALLS = {"loss": 0}


def doubled_loss_trainer(
    cfg, args, model, tokenizer, train_set, eval_set, callbacks, console=None, plan=None
):
    """SFT's Trainer with another loss: twice the cross-entropy (the toy method's whole difference)."""
    from finetune.train.assemble import sft_trainer

    trainer = sft_trainer(cfg, args, model, tokenizer, train_set, eval_set, callbacks, console, plan)
    plain = trainer.compute_loss

    def doubled(model, inputs, *rest, **kwargs):
        CALLS["loss"] += 1
        out = plain(model, inputs, *rest, **kwargs)
        return (out[0] * 2, *out[1:]) if isinstance(out, tuple) else out * 2

    trainer.compute_loss = doubled
    return trainer


TOY = methods.Method(
    name="doubled",
    title="doubled SFT",
    key="rl",
    value="doubled",
    rows="answers",  # SFT's data: tokens and labels
    trainer=doubled_loss_trainer,
)


@pytest.mark.usefixtures("one_thread")
def test_a_method_registered_in_the_table_trains_end_to_end(tiny_model_dir, tmp_path):
    """rl: doubled is known only to the table: the config accepts it, data, train and the card follow it."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(8)))
    raw = {
        "base_model": str(tiny_model_dir), "adapter": "lora", "lora_r": 4, "lora_target_linear": True,
        "rl": "doubled", "datasets": [{"path": str(data), "type": INST_FORMAT}], "sequence_len": 128,
        "dataset_prepared_path": str(tmp_path / "prepared"), "output_dir": str(tmp_path / "out"),
        "micro_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1, "seed": 1,
    }  # fmt: skip
    with pytest.raises(Exception, match="'doubled' is not a known method"):
        config.Config.model_validate(raw)
    with methods.register(TOY):
        cfg = config.Config.model_validate(raw)
        assert cfg.training_kind == "doubled"
        CALLS["loss"] = 0
        out = Path(one_thread_run(cfg))
        assert CALLS["loss"] >= 2  # the toy loss ran at every step
        assert (out / "adapter_model.safetensors").is_file()
        card = (out / "README.md").read_text()
        assert "- doubled" in card and "(doubled, loss on" in card  # the card names the method that trained
    assert "doubled" not in methods.rl_names()  # the block ends, the table is as before


# ---------------------------------------------------------------- the contracts the table needs


@pytest.mark.skipif(not Path(LINT).exists(), reason="import-linter is not installed (dev extra)")
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the table sits below every stage that asks it (config included): it imports none of them
        ("methods/record.py", "from finetune.train import trl_steps", "Pipeline layers"),
        ("methods/pairs.py", "from finetune.config import trl_keys", "Pipeline layers"),
        # plan reads data through the package's public functions only
        ("plan/speed.py", "from finetune.data import sources", "plan asks data through its public functions"),
    ],
)
def test_the_linter_refuses_a_planted_import(tmp_path, module, line, broken):
    result = lint(planted(tmp_path, module, line))
    assert result.returncode != 0
    assert f"{broken}" in result.stdout.replace("\n", " ") and "BROKEN" in result.stdout
