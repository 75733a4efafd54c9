"""The Hugging Face hub keys: where a run is pushed and when. axolotl's `hub_model_id`, `hub_strategy` and
`hub_revision` (passed by axolotl to the HF Trainer, so they mean what TrainingArguments says), and the HF
Trainer's `hub_private_repo`. The pushing itself is outputs/push.py (what is uploaded) and train/hub_push.py
(when, during training); `finetune push` does the same for a finished run.

Defaults follow axolotl (its core/builders/base.py, mid-2026): with only `hub_model_id` set it pushes at
every save (the HF Trainer's default `every_save`), into a private repo (axolotl hard-codes
`hub_private_repo=True`; the HF Trainer alone would create a public one). `hub_private_repo: false` is the one
way to a public repo.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from finetune.config.checks import HUB_ID
from finetune.config.datasets import StrictModel


class HubKeys(StrictModel):
    # --- the Hugging Face hub
    hub_model_id: str | None = Field(
        None,
        description="Push the run to this hub model repo (`org/name` or `name` in your namespace), as `hub_strategy` says; the token comes from HF_TOKEN or `hf auth login`, never from the YAML. Uploads the adapter, tokenizer, card, config.yml, loss.png and results (the same files as `finetune push`). A failed push warns and training goes on; the local run is never lost.",
    )
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] | None = Field(
        None,
        description="When to push (default every_save, as in axolotl): `end` once, after the final save; `every_save` also at each checkpoint save (the adapter, tokenizer, config.yml and a card of the run so far); `checkpoint` also the latest checkpoint (with its optimizer state, to resume from) into `last-checkpoint/`; `all_checkpoints` every checkpoint into `checkpoint-N/`. Each push during training blocks it for the upload.",
    )
    hub_private_repo: bool | None = Field(
        None,
        description="false: create the repo public. Default private, as axolotl does (the HF Trainer alone defaults to public). Only decides when the repo is created: an existing repo keeps its visibility.",
    )
    hub_revision: str | None = Field(
        None, description="Branch to push to (created from main when it does not exist; default main)."
    )

    @field_validator("hub_model_id")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and (not HUB_ID.fullmatch(v) or "--" in v or ".." in v):
            raise ValueError(f"not a hub repo id: {v!r} (expected name or org/name)")
        return v

    @property
    def hub_private(self) -> bool:
        """Private unless the config says `hub_private_repo: false`."""
        return self.hub_private_repo is not False

    @property
    def hub_strategy_or_default(self) -> str:
        return self.hub_strategy or "every_save"  # axolotl leaves it to the HF Trainer, whose default it is


def hub_checks(cfg: HubKeys) -> list[tuple[tuple, str]]:
    """The other hub keys mean nothing without a repo to push to: reported at the key that is set."""
    if cfg.hub_model_id:
        return []
    return [
        ((key,), "needs hub_model_id (the repo to push to): set it, or remove this key")
        for key in ("hub_strategy", "hub_private_repo", "hub_revision")
        if getattr(cfg, key) not in (None, False)  # `hub_private_repo: false` is axolotl's placeholder
    ]
