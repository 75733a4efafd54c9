"""`finetune train`: the recipe, top to bottom — tokenizer, data, model, Trainer, train, outputs, card.

    finetune tiny-model models/tiny && finetune train examples/quickstart.yaml     # seconds on a CPU
    finetune train configs/financebench.yaml --smoke                               # check a recipe first

Each step is a call into the module that owns it (tokenizer, data, model, arguments, run_files, card);
this file only orders them and decides who writes: in a multi-process run only the main process writes
outputs, and it prepares the data first while the others wait, then they read its cache.

batching, callbacks and hub_push import transformers (so torch) at the top: the recipe imports them where it
reaches them, after the fit check, so a run refused before loading stops at once with its one line (and no
library's import-time log lines); they are the only modules imported inside its functions.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console

from finetune import data, hub, methods, model, quiet
from finetune.config import Config
from finetune.data import report_files
from finetune.data.tokenizer import count_new_tokens, load_tokenizer
from finetune.errors import UserError
from finetune.model import compute, gguf_base
from finetune.outputs import card, run_files
from finetune.train import arguments, checkpoints, distributed, lm_eval_end, tracking
from finetune.train.assemble import build_trainer
from finetune.train.fit_check import check as check_fit
from finetune.train.fit_check import judge as judge_fit
from finetune.train.smoke import smoke_config, smoke_rows


def run(
    cfg: Config, overwrite: bool = False, resume: bool = False, smoke: bool = False, callbacks=(),
    fit_check: bool = True, memory_gib: float | None = None, tune_cpu_heap: bool = False,
) -> Path:  # fmt: skip
    """Train one adapter as `cfg` says; returns output_dir. Ctrl-C/SIGTERM checkpoint and exit (128 + signal).
    `fit_check`: stop first when the run is predicted not to fit the device (`memory_gib`: its size instead).
    `tune_cpu_heap`: set glibc's allocator for this run (model.compute.cpu_heap). It changes the whole process
    for its lifetime, so only `finetune train`'s own process asks for it (not a notebook or a test calling
    run(), not --smoke); all_results.json says which heap ran (`cpu_heap`: fast, compact or default)."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    notes: list[str] = []  # every replacement of what the config says, printed as soon as it is known

    def say_notes() -> None:
        for note in notes:
            console.print(f"[yellow]note:[/] {note}")
        notes.clear()

    _quiet_libraries()
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if smoke:
        if cfg.micro_batch_size == "auto":  # the tiny model fits anything; a smoke run checks mechanics
            cfg = cfg.model_copy(update={"micro_batch_size": 1})
        cfg = smoke_config(cfg, notes)
        overwrite = resume = False  # a smoke run always starts afresh in its own temp folder
    offline = hub.offline_if_unreachable(
        cfg.hub_ids
    )  # no network: one line now, not a minute of retries later
    if offline:
        notes.append(offline)
    predicted: dict = {}
    checked = None  # the fit check's plan
    if not smoke:  # before anything is loaded or written: does it fit? (micro_batch_size: auto resolved)
        cfg, predicted, checked = check_fit(cfg, fit_check, memory_gib, smoke, notes)
    output_dir = Path(cfg.output_dir)
    is_main = distributed.setup(cfg, notes)  # a multi-process run: join the group; only rank 0 writes
    lm_eval_tasks = None
    if is_main:
        tracking.check_wandb_credentials(cfg)
        tracking.check_trackers(cfg)
        lm_eval_tasks = lm_eval_end.check(cfg)  # an unknown task name stops the run before anything loads
        if skipped := lm_eval_end.skip_reason(cfg, smoke):
            notes.append(skipped)
            lm_eval_tasks = None
    console.quiet = not is_main  # the other ranks would print the same lines again

    # --- where we start: a fresh folder, or the last complete checkpoint of this one
    start_from = checkpoints.start_point(
        cfg, overwrite, resume, is_main, warn=lambda m: console.print(f"[yellow]warning:[/] {m}")
    )
    if start_from is not None:
        console.print(f"resuming from {start_from}")
    say_notes()

    # --- tokenizer and data (the main process prepares and caches; the others wait, then read its cache)
    with _status(console, "loading the tokenizer"):
        tokenizer = load_tokenizer(cfg)
    with distributed.main_process_first(), _status(console, "preparing the data"):
        prepared = data.prepare(cfg, tokenizer, is_main=distributed.local_rank() == 0)
    train_set, eval_set = (
        prepared.train,
        prepared.eval if prepared.eval is not None and len(prepared.eval) else None,
    )
    if smoke:
        train_set, eval_set = smoke_rows(cfg, train_set, eval_set, notes)
    say_notes()
    console.print(f"data: {len(train_set)} training rows, {len(eval_set) if eval_set else 0} evaluation rows")
    if is_main and not smoke:  # the data report (`finetune data`): three lines, a warning when eval rows leak
        report_files.show_for_training(report_files.for_training(cfg, tokenizer, prepared.path), console)
    # the fit judged again for this data's largest batch; on CPU: a step's activations keep their pages from
    # step to step (fewer page faults), unless RAM is tight
    heap = judge_fit(cfg, train_set, checked, fit_check, predicted, notes)
    applied = tune_cpu_heap and not smoke and compute.cpu_heap(compact=heap == "compact")
    predicted["cpu_heap"] = heap if applied else "default"  # default: glibc's, as the process had it

    # --- model: base + adapter, and the Trainer's arguments
    prec = model.precision(cfg)
    with (
        _status(console, f"loading {cfg.base_model}"),
        distributed.sharded_loading(cfg, prec),  # ZeRO-3: built partitioned
    ):
        loaded = model.load(cfg, tokenizer, count_new_tokens(cfg, tokenizer))
    share = 100 * loaded.trainable_params / max(1, loaded.total_params)
    console.print(
        f"model: {cfg.base_model} ({loaded.quantization}) + {cfg.adapter or 'full fine-tune'}: "
        f"{loaded.trainable_params:,} trainable "
        f"of {loaded.total_params:,} parameters ({share:.3f}%)"
    )
    from finetune.train import batching  # transformers and torch: imported only now (see above)

    attention = batching.attention_for(cfg, loaded.model, loaded.attn_implementation)
    batch_plan = batching.plan(cfg, tokenizer, train_set, eval_set, attention)
    notes += batch_plan.notes
    # GRPO: a step counts completions, num_generations of each prompt
    rows = len(train_set) * methods.of(cfg).trl_values(cfg).get("num_generations", 1)
    args, sched = arguments.training_arguments(
        cfg,
        prec,
        rows,
        eval_set is not None,
        str(output_dir),
        notes,
        batch_plan.batches_per_epoch,
        length_grouped=batch_plan.strategy == "group_by_length",
    )
    notes += loaded.notes
    say_notes()

    # --- train (config.yml first, so an interrupted run can be understood and carded)
    trainer, stop, throughput = build_trainer(
        cfg, args, loaded.model, tokenizer, train_set, eval_set, console, list(callbacks), batch_plan
    )
    batching_now = trainer.batching_facts()["batching"]  # DPO, KTO, GRPO, reward: TRL's trainer batches
    console.print(f"batching: {batch_plan.summary if batching_now == batch_plan.strategy else batching_now}")
    console.print(
        f"training: {sched.total_steps} optimizer steps ({sched.steps_per_epoch} per epoch)"
        + arguments.packing_note(cfg, len(train_set), sched)
    )
    checkpoints.begin_output(output_dir, overwrite, is_main)  # --overwrite: the old run goes only now
    if trainer.is_world_process_zero():
        run_files.write_config(cfg, output_dir)
    from finetune.train import hub_push

    hub_failure = None
    trackers = {**tracking.wandb_environment(cfg, str(output_dir)), **tracking.tracker_environment(cfg)}
    with _environ(trackers), tracking.mlflow_run(cfg, trainer.is_world_process_zero()) as mlflow_facts:
        try:
            result = trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)
        except BaseException:  # e.g. a reward function's one-line error: give the signal handlers back
            stop.on_train_end(None, None, None)
            raise
        if stop.saved_step is not None:  # a signal arrived during training: checkpointed and stopped
            _finish_wandb(cfg)
            console.print(
                f"[bold yellow]{stop.signal_name}: stopped at step {stop.saved_step}; checkpoint saved in "
                f"{output_dir / f'checkpoint-{stop.saved_step}'}.[/]"
                + ("" if smoke else f"\nResume with: {checkpoints.resume_command()}")
            )
            raise SystemExit(128 + stop.received)
        if trainer.state.global_step < trainer.state.max_steps:
            console.print(early_stop_reason(trainer, cfg))
        eval_metrics = final_evaluation(trainer, eval_set)
        run_files.save_model(trainer, output_dir)  # every process: ZeRO-3 gathers the weights collectively

        # --- outputs: only the main process writes
        if trainer.is_world_process_zero():
            facts = {**run_facts(trainer, prec, cfg), **predicted, **(mlflow_facts or {})}
            tokens = throughput.session_tokens(trainer.state)
            train_res, all_res = run_files.results(
                trainer, result.metrics, eval_metrics, tokens, prepared.stats, facts
            )
            run_files.write_run_files(trainer, output_dir, train_res, all_res, eval_metrics)
            if lm_eval_tasks is not None:  # lm_eval_tasks: scored now, so the card carries the scores
                lm_eval_end.run(cfg, lm_eval_tasks, trainer.model, tokenizer, output_dir, console)
            _write_card(output_dir)
            _finish_wandb(cfg, all_res)
            summary = run_files.summary_lines(output_dir, all_res)
            Console(highlight=False, soft_wrap=True).print("\n".join(["[bold green]done[/]", *summary]))
            hub_failure = hub_push.final_push(cfg, output_dir, console)  # hub_model_id: push the run
    distributed.finish()
    hub_push.raise_if_failed(hub_failure, cfg, output_dir)  # exit 2 after a failed push; the run is complete
    return output_dir


def early_stop_reason(trainer, cfg: Config) -> str:
    """Why training ended before its last step: the loss watchdog, else early stopping on the eval loss."""
    from finetune.train.callbacks import LossWatchdog

    step, last = trainer.state.global_step, trainer.state.max_steps
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, LossWatchdog) and callback.stopped_step is not None:
            return f"[bold yellow]stopped early at step {step} of {last}: {callback.message}[/]"
    return (
        f"stopped early at step {step} of {last}: no eval loss improvement in {cfg.early_stopping_patience} "
        "evaluations (early_stopping_patience)"
    )


def final_evaluation(trainer, eval_set) -> dict:
    """The final eval loss: reuse the evaluation at the last step, or run one now (also after the best
    checkpoint was loaded back, so the numbers describe the adapter that is saved)."""
    if eval_set is None:
        return {}
    history = trainer.state.log_history
    last = next((e for e in reversed(history) if "eval_loss" in e), None)
    reloaded = trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint
    if last is not None and last.get("step") == trainer.state.global_step and not reloaded:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def run_facts(trainer, prec, cfg: Config) -> dict:
    """Facts the card reports that HF's metrics leave out."""
    facts = {
        **gguf_base.facts(cfg),  # a GGUF base: its file and quantization
        **({"trackio_project": trainer.args.project} if cfg.trackio_on else {}),  # the card names it
        **distributed.facts(trainer),  # distributed type, ZeRO stage, processes, global batch size
        "mixed_precision": "bf16" if prec.bf16 else "fp16" if prec.fp16 else "no",
        # models/tiny looks like a hub id from another folder: the card (run_dir.hub_base) reads this
        "base_model_local": Path(cfg.base_model).expanduser().exists(),
        "device": str(trainer.args.device),  # where 4-bit weights were quantized: merge.quantization_device
        **trainer.batching_facts(),  # strategy, padding fraction, tokens per step of token-budget batches
    }
    if "total_train_batch_tokens" in facts:  # rows per step vary there: micro_batch_size x ... is no count
        facts.pop("total_train_batch_size", None)
    return facts


# ---------------------------------------------------------------- processes and environment


@contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_libraries() -> None:
    """Our progress replaces the libraries' own bars; their warnings still show, but not the false alarms."""
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    quiet.false_alarms()


def _status(console, text: str):
    return console.status(text) if console.is_terminal else nullcontext()


def _write_card(output_dir: Path) -> None:
    card.write_card(output_dir)


def _finish_wandb(cfg: Config, summary: dict | None = None) -> None:
    if not cfg.use_wandb:
        return
    import wandb

    if wandb.run is not None:
        if summary:
            wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
        wandb.finish()
