# ruff: noqa: E402
"""Resuming at the edges, on the tiny model: from a checkpoint already at max_steps (nothing left to train), and
reading an interrupted run whose only weights are in its checkpoints (generate/eval)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from test_full_finetune import make_cfg, state_of

from finetune import config, train

pytestmark = [pytest.mark.usefixtures("one_thread")]
LORA = {"adapter": "lora", "lora_target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resuming_from_the_last_checkpoint_trains_no_extra_step(method, tiny_model_dir, tmp_path):
    """max_steps 3 ends mid-epoch (12 batches an epoch): the HF Trainer checks max_steps only after a step, so
    a resume from checkpoint-3 used to train a 4th step and save weights that were not checkpoint-3's."""
    over = LORA if method == "lora" else {}
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    first = train.run(make_cfg(tiny_model_dir, tmp_path / "first", tmp_path / "prep", save_steps=1, **over))
    last = first / "checkpoint-3"
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 3
    cfg = make_cfg(tiny_model_dir, tmp_path / "again", tmp_path / "prep", save_steps=1, **over)
    out = train.run(config.validate({**config.resolved_dict(cfg), "resume_from_checkpoint": str(last)}))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    assert not (out / "checkpoint-4").exists()
    a, b = state_of(last, weights), state_of(out, weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # checkpoint-3's, untouched


def test_generate_and_eval_read_an_interrupted_full_fine_tune_from_its_newest_checkpoint(
    tiny_model_dir, tmp_path
):
    from test_full_finetune import QA

    from conftest import send_signal
    from finetune.errors import UserError
    from finetune.inference import evaluate, generate

    cfg = make_cfg(tiny_model_dir, tmp_path / "out", tmp_path / "prep", save_steps=1)
    with pytest.raises(SystemExit):
        train.run(cfg, callbacks=[send_signal(1)])  # stops after step 2 of 3
    out = tmp_path / "out"
    assert not (out / "config.json").exists() and (out / "checkpoint-2" / "model.safetensors").is_file()
    assert not (out / "checkpoint-3").exists()
    said = []
    loaded = generate.load(out, say=said.append)
    assert loaded.what == "fully fine-tuned" and any("checkpoint-2" in s and "interrupted" in s for s in said)
    saved = state_of(out / "checkpoint-2")
    weights = dict(loaded.model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in saved.items())  # the checkpoint's trained weights
    result = evaluate.run(out, QA, limit=2, max_new_tokens=4)
    assert result["examples"] == 2 and (out / "eval_results.json").is_file()
    from huggingface_hub import ModelCard  # the run folder's card carries the scores (a full fine-tune's too)

    scored = {r.dataset_name for r in ModelCard.load(out / "README.md").data.eval_results}
    assert QA.stem in scored

    for ckpt in out.glob("checkpoint-*"):  # no checkpoint holds a whole model: one line saying what to do
        (ckpt / "model.safetensors").unlink()
    with pytest.raises(
        UserError, match=r"full fine-tune with no saved model .*finetune train CONFIG --resume"
    ):
        generate.load(out, say=said.append)
