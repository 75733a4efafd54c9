"""Pushing to the hub while training, as `hub_strategy` says (axolotl's keys, the HF Trainer's meanings).

Not the HF Trainer's own push_to_hub machinery (TrainingArguments.push_to_hub/hub_strategy): it uploads the
whole output_dir but checkpoint-* (training_args.bin, metrics.jsonl, a data cache or an `.env` that happens to
be there), writes its own model card over finetune's at the end, and creates the repo when training starts, so
a hub failure there ends the run. Instead this callback calls outputs/push.py with the allow-list of
`finetune push`, in one commit per push:

- `end`: once, after the final save, the results and the card;
- `every_save` (the default, as in axolotl, which leaves it to the HF Trainer): at each checkpoint save the
  checkpoint's adapter and tokenizer, config.yml and a card of the run so far, at the top of the repo; then the
  final push;
- `checkpoint`: the same, plus that checkpoint (with the optimizer state, to resume from) in `last-checkpoint/`;
- `all_checkpoints`: the same, each checkpoint in its own `checkpoint-N/`.

A push blocks training for its upload (an adapter is small; checkpoints add the optimizer state). A failed push
during training is one warning line and training goes on. A failed final push leaves the run complete on disk;
`finetune train` then exits 2 with the reason and the `finetune push` command that sends it.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from finetune.config import Config
from finetune.errors import UserError
from finetune.outputs import card, push, push_files


def _problem(exc: Exception) -> str:
    """One line for a failed push; something unexpected is named as such (it is a bug, but training goes on)."""
    if isinstance(exc, UserError):
        return "; ".join(exc.problems)
    return f"{type(exc).__name__}: {exc} (unexpected: please report it)"


def save_files(cfg: Config, output_dir: Path, checkpoint: Path) -> list[push_files.Upload]:
    """What one checkpoint save pushes: its adapter, tokenizer and state, config.yml, a card of the run so far,
    and with `checkpoint`/`all_checkpoints` the checkpoint itself."""
    files = push_files.model_files(checkpoint, card=False)
    files.append(push_files.Upload("config.yml", output_dir / "config.yml"))
    files.append(push_files.Upload("README.md", card.render(output_dir).encode()))
    if cfg.hub_strategy == "checkpoint":
        files += push_files.checkpoint_files(checkpoint, "last-checkpoint/")
    elif cfg.hub_strategy == "all_checkpoints":
        files += push_files.checkpoint_files(checkpoint, f"{checkpoint.name}/")
    return files


def _push(cfg: Config, files, message: str) -> str:
    return push.push(
        cfg.hub_model_id, files, private=cfg.hub_private, revision=cfg.hub_revision, message=message
    )


class HubPush(TrainerCallback):
    """Push at each checkpoint save (every hub_strategy but `end`); a failure warns and training goes on."""

    def __init__(self, cfg: Config, console):
        self.cfg, self.console = cfg, console

    def on_train_begin(self, args, state, control, **kwargs):
        from huggingface_hub import get_token

        if state.is_world_process_zero and get_token() is None:
            self.console.print(
                "[yellow]warning:[/] hub_model_id: no Hugging Face token (set HF_TOKEN or run `hf auth login`): "
                "training goes on, but nothing can be pushed"
            )

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.cfg.hub_strategy_or_default == "end":
            return
        step = state.global_step
        output_dir = Path(args.output_dir)
        try:
            url = _push(
                self.cfg,
                save_files(self.cfg, output_dir, output_dir / f"checkpoint-{step}"),
                f"Training in progress, step {step}",
            )
            self.console.print(f"pushed step {step} to {url}")
        except Exception as exc:  # a failed push never stops training: the run is saved locally either way
            self.console.print(f"[yellow]warning:[/] hub push at step {step} failed: {_problem(exc)}")


def final_push(cfg: Config, output_dir: Path, console) -> str | None:
    """The push at the end of training (every strategy); the reason it failed, or None."""
    if not cfg.hub_model_id:
        return None
    try:
        url = _push(cfg, push_files.run_uploads(output_dir), "End of training")
    except Exception as exc:  # the run is complete on disk: report, and let `train` exit 2 at the very end
        return f"hub push failed: {_problem(exc)}"
    console.print(f"pushed {output_dir} to {url}")
    return None


def raise_if_failed(failure: str | None, cfg: Config, output_dir: Path) -> None:
    """After a failed final push, once everything else is done: exit 2 with the command that pushes the run."""
    if failure:
        flags = (" --public" if not cfg.hub_private else "") + (
            f" --revision {cfg.hub_revision}" if cfg.hub_revision else ""
        )
        retry = f"finetune push {output_dir} {cfg.hub_model_id}{flags}"
        raise UserError([failure, f"the run is complete in {output_dir}; push it with: {retry}"])
