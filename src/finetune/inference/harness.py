"""`finetune eval OUTPUT_DIR --tasks ...`: lm-evaluation-harness on the run's model, in this process.

    finetune eval outputs/fpb --tasks arc_easy,hellaswag --limit 200
    finetune eval outputs/fpb --tasks my_mc --include-path tasks/ --base-only     # the base's figures

The run's model is loaded the way `finetune generate` loads it (base + adapter, 4-bit if trained so, or a
merged folder, or with --base-only the base alone) and handed to lm-eval as it is (model/harness.py). Results
go into eval_results.json under `lm_eval` (outputs/lm_eval_results.py) and the card is rewritten, so it shows
base → fine-tuned for each task and metric.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from finetune.errors import UserError
from finetune.inference import generate
from finetune.model import harness
from finetune.outputs import card, lm_eval_results


def task_names(tasks: str) -> list[str]:
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: name at least one lm-eval task (comma-separated)")
    return names


def run(
    path: str | Path,
    tasks: str | list[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    base_only: bool = False,
    out: str | Path | None = None,
    console=None,
    trust_remote_code: bool = False,
) -> dict[str, dict]:
    """Evaluate, save under `lm_eval`, refresh the card; returns lm-eval's results by task."""
    console = console or Console(highlight=False, soft_wrap=True)
    path = Path(path)
    names = task_names(tasks) if isinstance(tasks, str) else list(tasks)
    for name, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise UserError(f"{name}: must be > 0 (got {value})")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot: must be >= 0 (got {num_fewshot})")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: folder not found")
    manager = harness.task_manager(names, include_path, "--tasks")  # before the model loads: a typo is quick
    loaded = generate.load(path, base_only=base_only, say=console.print, trust_remote_code=trust_remote_code)
    console.print(f"lm-eval: {', '.join(names)} on the {loaded.what} model, batches of {batch_size}")
    results = harness.evaluate(
        loaded.model,
        loaded.tokenizer,
        names,
        manager,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
    )
    out_dir = Path(out) if out else path
    who = "base" if base_only else "finetuned"
    saved = lm_eval_results.save(out_dir, results, who, loaded.what)
    console.print(lm_eval_results.console_table(saved, list(results)))
    console.print(f"wrote {out_dir / lm_eval_results.RESULTS_FILE}")
    run_folder = loaded.run.cfg.adapter is None or (
        loaded.what != "merged" and loaded.run.adapter_dir is not None
    )
    if out_dir.resolve() == path.resolve() and run_folder:  # a training run's folder (a full fine-tune's too)
        console.print(f"wrote {card.write_card(path)} (results in the model-index)")
    elif out_dir.resolve() != path.resolve():
        console.print(f"note: the card in {path} is unchanged (results went to --out {out_dir})")
    return results
