"""lm-evaluation-harness on a model already in memory: the benchmarks the field reports, on the run's own model.

    finetune eval outputs/run --tasks arc_easy,hellaswag --limit 200          # base + adapter, as trained
    finetune eval outputs/run --tasks my_task --include-path tasks/ --base-only

The model is handed to lm-eval as it is (its `HFLM(pretrained=model, tokenizer=...)`): base + adapter in the
precision it trained in (4-bit stays 4-bit), a merged folder, or the base alone; nothing is loaded twice or
downloaded. The numbers are lm-eval's own: `lm_eval --model hf` on a merged folder gives the same (a test
checks it). Shared by `finetune eval --tasks` (inference/) and `lm_eval_tasks` at the end of training (train/).
lm-eval is an optional extra (`pip install 'finetune[eval]'`), imported only here and only when asked for.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from finetune.errors import UserError

INSTALL = "pip install 'finetune[eval]'"


def _quiet() -> None:
    """lm-eval logs each task's config and every request count at INFO: warnings are what a user needs."""
    for name in ("lm-eval", "lm_eval", "evaluate", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _known(manager, name: str) -> bool:
    """A registered task/group/tag name, or a task YAML file (lm-eval accepts a path in place of a name)."""
    return name in manager.task_index or (
        name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()
    )


def task_manager(tasks: list[str], include_path: str | Path | None, where: str):
    """lm-eval's TaskManager knowing every name in `tasks`; an unknown name is one UserError line at `where`.

    With an include path its folder is indexed alone first: lm-eval's own index (~15k tasks) takes 10-30 s to
    build, so tasks of one's own are checked in a moment; any other name builds the whole index.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(f"{where}: lm-eval is not installed: {INSTALL}") from None
    _quiet()
    include = str(Path(include_path).expanduser()) if include_path else None
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(_known(local, t) for t in tasks):
            return local
    manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if not _known(manager, t)]
    if unknown:
        hints = [
            f"{t} (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(t, manager.all_tasks, 3)) else t
            for t in unknown
        ]  # fmt: skip
        where_else = f" or in {include_path}" if include_path else ""
        raise UserError(
            f"{where}: unknown lm-eval task{'s' if len(unknown) > 1 else ''}: {'; '.join(hints)} — not among "
            f"lm-eval's {len(manager.all_tasks):,} tasks{where_else} (`lm_eval ls tasks` lists them)"
        )
    return manager


def evaluate(model, tokenizer, tasks: list[str], manager, *, limit: int | None = None,
             num_fewshot: int | None = None, batch_size: int = 8) -> dict[str, dict]:  # fmt: skip
    """lm-eval's results for each task (and group), by task name: metrics, their standard errors, rows scored.

    Runs with lm-eval's defaults otherwise (its seeds, no chat template, bootstrap for stderr), as its own
    `lm_eval` command does, so both give the same numbers for the same model.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    _quiet()
    training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=False,
        )  # fmt: skip
    finally:
        model.train(training)
    results = {}
    for name, values in {**out.get("results", {}), **out.get("groups", {})}.items():
        # lm-eval's metric keys are `metric,filter`; `alias` and `sample_len` (rows scored) are not metrics
        metrics = {k: v for k, v in values.items() if "," in k and "_stderr," not in k and _number(v)}
        stderr = {k.replace("_stderr,", ","): v for k, v in values.items() if "_stderr," in k and _number(v)}
        samples = out.get("n-samples", {}).get(name, {})
        results[name] = {
            "metrics": metrics,
            "stderr": stderr,
            "higher_is_better": out.get("higher_is_better", {}).get(name, {}),
            "samples": samples.get("effective"),
            "num_fewshot": out.get("n-shot", {}).get(name),
            "version": out.get("versions", {}).get(name),
            "limit": limit,
            "batch_size": batch_size,
            "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        }
    return results


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
