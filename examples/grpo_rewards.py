"""A reward function for examples/grpo.yaml, called as TRL's GRPOTrainer calls one: the prompts, the sampled
completions (text) and their token ids, and every dataset column as a keyword list (`reference`: the row's
answer; `source`: its file:line). Return one float per completion (None: not scored)."""


def brevity(prompts, completions, completion_ids, reference, **kwargs):
    """1 for an answer of at most three words, falling toward 0 as it grows: a label, not an essay."""
    return [min(1.0, 3 / max(1, len(text.split()))) for text in completions]
