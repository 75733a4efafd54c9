"""The methods that learn from preferences: a reward model, DPO, KTO, ORPO and SimPO (TRL's trainers, fed the
pairs the data stage tokenized; KTO also reads unpaired rows). Each record says which keys it reads, how they
map into its TRL config, and what its card says."""

from __future__ import annotations

from finetune.methods.record import Method

DPO_BIBTEX = """@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023)},
    url          = {https://arxiv.org/abs/2305.18290}
}"""
TRL_LOG_KEYS = (  # training-log metrics shown in the card's results table when a run has no evaluations
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "accuracy", "margin",
    "reward", "reward_std", "kl", "completions/mean_length",
)  # fmt: skip
NO_REFERENCE_COPY = "the reference is the base model with the adapter switched off"
PAIRS = "preference pairs, padded per batch"
NOT_PACKED = "not for preference pairs (batches of chosen + rejected, padded)"
PAIR_REFUSALS = (  # {name}: the method's name
    ("min_sample_len", "for SFT data only (not {name} pairs): remove it"),
    ("train_on_inputs", "has no meaning for {name} training: remove it"),
    ("sample_packing", NOT_PACKED),
    ("eval_sample_packing", NOT_PACKED),
    ("group_by_length", NOT_PACKED),
    ("batch_flattening", NOT_PACKED),
    ("eval_metrics", "SFT only: DPO and reward models log rewards and accuracy"),
)


def _dpo_losses(cfg) -> list[str]:
    loss = cfg.dpo_loss_type or "sigmoid"
    return [loss] if isinstance(loss, str) else list(loss)


def _kto_rows(data: dict | None) -> str:
    """How KTO's rows came about: unpaired rows read as such, pairs split, or both (data stage counts)."""
    data = data or {}
    rows, pairs = data.get("unpaired_rows", 0), data.get("pairs_split", 0)
    counts = (
        f" ({data['desirable']:,} desirable, {data['undesirable']:,} undesirable training rows)"
        if "desirable" in data
        else ""
    )
    split = "each pair's answers as a desirable and an undesirable row"
    if rows and pairs:
        return f"unpaired rows, and {split}{counts}"
    if rows:
        return f"unpaired rows, each answer labelled desirable or undesirable{counts}"
    return f"{split}{counts}"


def _simpo_gamma(cfg) -> float:
    return cfg.simpo_gamma if cfg.simpo_gamma is not None else 0.5


REWARD = Method(
    name="reward",
    title="reward model",
    aliases=("reward-model",),
    key="reward_model",
    value=True,
    rows="pairs",
    refuses=PAIR_REFUSALS,
    own_keys=("num_labels",),
    trainer="finetune.train.preference:build_trainer",
    trl_trainer="RewardTrainer",
    trl_config="trl:RewardConfig",
    score_head=True,
    pipeline_tag="text-classification",
    tags=("trl", "reward-trainer", "reward-model"),
    objective=lambda cfg, data: (
        "reward model: Bradley-Terry loss, the chosen answer of each pair scored above the rejected one"
    ),
    hyperparameters=lambda cfg: {"reward_head": "score (1 output), trained in full"},
    log_keys=TRL_LOG_KEYS,
    batching=PAIRS,
)
DPO = Method(
    name="dpo",
    title="DPO",
    key="rl",
    value="dpo",
    rows="pairs",
    refuses=PAIR_REFUSALS,
    own_keys=("rl_beta", "dpo_loss_type"),
    default_beta=0.1,
    trainer="finetune.train.preference:build_trainer",
    trl_trainer="DPOTrainer",
    trl_config="trl:DPOConfig",
    trl_values=lambda cfg: {"beta": DPO.beta(cfg), "loss_type": _dpo_losses(cfg)},
    tags=("trl", "dpo"),
    paper="https://arxiv.org/abs/2305.18290",
    bibtex=DPO_BIBTEX,
    objective=lambda cfg, data: (
        f"DPO, beta {DPO.beta(cfg):g}, {' + '.join(_dpo_losses(cfg))} loss; {NO_REFERENCE_COPY}"
    ),
    hyperparameters=lambda cfg: {"beta": DPO.beta(cfg), "loss_type": cfg.dpo_loss_type or "sigmoid"},
    log_keys=TRL_LOG_KEYS,
    batching=PAIRS,
)
KTO = Method(
    name="kto",
    title="KTO",
    key="rl",
    value="kto",
    rows="unpaired",
    refuses=PAIR_REFUSALS,
    own_keys=("rl_beta", "kto_desirable_weight", "kto_undesirable_weight"),
    default_beta=0.1,
    trainer="finetune.train.kto_orpo_simpo:build_trainer",
    trl_trainer="KTOTrainer",
    trl_config="trl:KTOConfig",
    trl_values=lambda cfg: {
        "train_sampling_strategy": "sequential",  # the KL term pairs neighbours in a batch
        "beta": KTO.beta(cfg),
        "desirable_weight": cfg.kto_desirable_weight or 1.0,
        "undesirable_weight": cfg.kto_undesirable_weight or 1.0,
    },
    tags=("trl", "kto"),
    paper="https://arxiv.org/abs/2402.01306",
    objective=lambda cfg, data: f"KTO, beta {KTO.beta(cfg):g}; {_kto_rows(data)}; {NO_REFERENCE_COPY}",
    hyperparameters=lambda cfg: {"beta": KTO.beta(cfg)},
    log_keys=TRL_LOG_KEYS,
    batching="unpaired rows (KTO), padded per batch",
)
ORPO = Method(
    name="orpo",
    title="ORPO",
    key="rl",
    value="orpo",
    rows="pairs",
    refuses=PAIR_REFUSALS,
    own_keys=("orpo_alpha",),
    trainer="finetune.train.kto_orpo_simpo:build_trainer",
    trl_trainer="ORPOTrainer",
    trl_config="trl.experimental.orpo:ORPOConfig",
    trl_values=lambda cfg: {"beta": cfg.orpo_alpha or 0.1},
    tags=("trl", "orpo"),
    paper="https://arxiv.org/abs/2403.07691",
    objective=lambda cfg, data: (
        f"ORPO, odds-ratio weight {cfg.orpo_alpha or 0.1:g} on top of the SFT loss; no reference model"
    ),
    hyperparameters=lambda cfg: {"orpo_alpha": cfg.orpo_alpha or 0.1},
    log_keys=TRL_LOG_KEYS,
    batching=PAIRS,
)
SIMPO = Method(
    name="simpo",
    title="SimPO",
    key="rl",
    value="simpo",
    rows="pairs",
    refuses=PAIR_REFUSALS,
    own_keys=("rl_beta", "simpo_gamma", "cpo_alpha"),
    default_beta=2.0,  # the SimPO paper's
    trainer="finetune.train.kto_orpo_simpo:build_trainer",
    trl_trainer="CPOTrainer, loss_type simpo",
    trl_config="trl.experimental.cpo:CPOConfig",
    trl_values=lambda cfg: {
        "loss_type": "simpo",
        "beta": SIMPO.beta(cfg),
        "simpo_gamma": _simpo_gamma(cfg),
        "cpo_alpha": cfg.cpo_alpha if cfg.cpo_alpha is not None else 0.0,
    },
    tags=("trl", "simpo"),
    paper="https://arxiv.org/abs/2405.14734",
    objective=lambda cfg, data: (
        f"SimPO (TRL's CPO, loss_type simpo), beta {SIMPO.beta(cfg):g}, gamma {_simpo_gamma(cfg):g}; "
        "no reference model"
    ),
    hyperparameters=lambda cfg: {"beta": SIMPO.beta(cfg)},
    log_keys=TRL_LOG_KEYS,
    batching=PAIRS,
)
