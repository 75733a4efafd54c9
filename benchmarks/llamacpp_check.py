"""Does a real client run the exported GGUF as finetune runs the adapter? llama.cpp (llama-cpp-python) vs
`finetune generate`, greedy, on held-out rows of a real SmolLM2 fine-tune.

    # once: llama.cpp's Python binding in its own venv (builds llama.cpp from source where no wheel is at hand;
    # BENCHMARKS.md has the CMAKE_ARGS used here, without AVX-512/AMX, ~55 minutes on 2 cores)
    python -m venv /work/venv-llamacpp && nice -n 19 /work/venv-llamacpp/bin/pip install llama-cpp-python
    # a real fine-tune: README "See it learn on a laptop" (~6 minutes on 2 cores)
    finetune train examples/sentiment.yaml
    python benchmarks/llamacpp_check.py outputs/sentiment --rows 40

For each --quant: `finetune export RUN --gguf --quant Q` (its own logit check included), then llama.cpp loads
the GGUF and answers each row's prompt, rendered through the Modelfile's TEMPLATE (the same Go-template subset
renderer the tests use) and tokenized by llama.cpp itself (add_bos from the GGUF), greedy (temperature 0, no
repeat penalty), stopping where llama.cpp stops (EOS / end-of-turn of the GGUF). `finetune generate`'s answers
come from its own code (inference.generate: base + adapter, fp32, greedy). Reported: equal answers (the pass
criterion: all of them for f16, >= 90% for q8_0), equal prompt token ids, label accuracy of both, wall times.
Exit 1 when a criterion is not met. The llama.cpp side runs in --llama-python's venv (this file, --worker).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDED = {"f16": 1.0, "bf16": 1.0, "q8_0": 0.9}
# --open: free-form questions (longer answers, so more tokens where the two could part ways)
OPEN_QUESTIONS = [
    "What is EBITDA?",
    "Explain what a bond yield is.",
    "Why do central banks raise interest rates?",
    "What does a balance sheet show?",
    "Define free cash flow.",
    "What is a dividend?",
    "How does inflation affect savings?",
    "What is the difference between revenue and profit?",
    "What is a stock split?",
    "Explain the price-to-earnings ratio.",
    "What is working capital?",
    "Why do companies issue shares?",
    "What is a recession?",
    "What does liquidity mean for a bank?",
    "What is an index fund?",
    "Explain compound interest.",
    "What is a credit rating?",
    "What is goodwill on a balance sheet?",
    "What does a CFO do?",
    "What is market capitalization?",
]


def plain_cpu_buffers() -> None:
    """Workaround: the prebuilt llama-cpp-python 0.3.36 wheel on this machine (AMX-capable Xeon) segfaults in
    llama.cpp's CPU "extra buffer types" (weight repacking / AMX kernels) on quantized weights: the original
    SmolLM2 Q4_1 file crashes too, and f16 does not. llama.cpp's own switch for them is the model parameter
    `use_extra_bufts`, which llama-cpp-python's Llama() does not pass on, so its default is changed here; the
    weights then stay in plain CPU buffers (the same ggml kernels, without repacking)."""
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = params


def worker(gguf: str, prompts_file: str, out_file: str, max_tokens: int) -> None:
    """Runs in the llama-cpp-python venv: answers every prompt greedily; writes answers and prompt ids."""
    import os

    if os.environ.get("LLAMACPP_EXTRA_BUFTS") != "1":
        plain_cpu_buffers()
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=2, seed=0, verbose=False)
    rows = json.loads(Path(prompts_file).read_text())
    out = []
    start = time.perf_counter()
    greedy = {"max_tokens": max_tokens, "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0, "seed": 0}
    for row in rows:
        prompt = row["prompt"]
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)  # BOS only if the GGUF says so
        done = llm.create_completion(prompt, **greedy)
        # the chat endpoint: the question as a user message, rendered by the GGUF's own chat template
        chat = llm.create_chat_completion([{"role": "user", "content": row["question"]}], **greedy)
        out.append(
            {
                "ids": ids,
                "answer": done["choices"][0]["text"],
                "chat": chat["choices"][0]["message"]["content"],
            }
        )
    Path(out_file).write_text(json.dumps({"rows": out, "seconds": time.perf_counter() - start}))


def finetune_answers(run: Path, rows: list[dict], max_new_tokens: int) -> tuple[list, list, float]:
    """`finetune generate`'s answer and prompt ids for each row's question (its code, loaded once)."""
    from finetune.inference import generate

    loaded = generate.load(run)
    field = loaded.dataset.type.field_instruction
    start = time.perf_counter()
    answers, ids = [], []
    for row in rows:
        prompt = generate.question_prompt(loaded.cfg, loaded.dataset, loaded.tokenizer, row[field])
        ids.append(prompt)
        answers.append(generate.answer(loaded, prompt, max_new_tokens))
    return answers, ids, time.perf_counter() - start


def ollama_prompts(modelfile: Path, rows: list[dict], field: str) -> list[str]:
    """Each row's question rendered through the Modelfile's TEMPLATE, as Ollama would (no SYSTEM given)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import gotemplate

    text = modelfile.read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else ""
    messages = [{"Role": "user", "Content": ""}]
    return [gotemplate.render(template, Prompt=r[field], System=system, Messages=messages) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=ROOT / "outputs" / "sentiment")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "sentiment_test.jsonl")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--quant", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--llama-python", default="/work/venv-llamacpp/bin/python")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamacpp_check"))
    parser.add_argument("--reuse", action="store_true", help="Reuse finetune's answers saved in --workdir.")
    parser.add_argument(
        "--open", action="store_true", help="The 20 free-form OPEN_QUESTIONS instead of --data rows."
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("GGUF", "PROMPTS", "OUT", "MAX_TOKENS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker[:3], int(args.worker[3]))
        return 0
    if not Path(args.llama_python).is_file():
        print(
            f"{args.llama_python}: no such Python; create the venv first (see this file's docstring)",
            file=sys.stderr,
        )
        return 2

    from finetune.outputs import run_dir

    field = run_dir.read_run(args.run).cfg.datasets[0].type.field_instruction
    if args.open:
        rows = [{field: q, "target": "\0"} for q in OPEN_QUESTIONS]
    else:
        rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.rows]
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / f"finetune-{'open' if args.open else len(rows)}-{args.max_new_tokens}.json"
    if args.reuse and cache.is_file():  # the answers of `finetune generate` for these rows, measured before
        ours, our_ids, our_seconds = json.loads(cache.read_text())
    else:
        ours, our_ids, our_seconds = finetune_answers(args.run, rows, args.max_new_tokens)
        cache.write_text(json.dumps([ours, our_ids, our_seconds]))
    results, ok = [], True
    for quant in args.quant:
        out = args.workdir / quant
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "finetune.cli", "export", str(args.run), "--gguf", "--quant", quant,
               "--out", str(out), "--name", "model", "--overwrite"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        export_seconds = time.perf_counter() - start
        check = next((line for line in done.stdout.splitlines() if "GGUF" in line and "check" in line), "")
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return 1
        prompts = args.workdir / f"prompts-{quant}.json"
        rendered = ollama_prompts(out / "Modelfile", rows, field)
        prompts.write_text(
            json.dumps([{"prompt": p, "question": r[field]} for p, r in zip(rendered, rows, strict=True)])
        )
        answers_file = args.workdir / f"llamacpp-{quant}.json"
        ran = subprocess.run(
            [args.llama_python, __file__, "--worker", str(out / "model.gguf"), str(prompts), str(answers_file),
             str(args.max_new_tokens)],
        )  # fmt: skip
        if ran.returncode != 0:
            print(
                f"{quant}: llama.cpp failed (exit {ran.returncode}) on {out / 'model.gguf'}", file=sys.stderr
            )
            results.append(
                {"quant": quant, "rows": len(rows), "failed": ran.returncode, "export_check": check}
            )
            ok = False
            continue
        theirs = json.loads(answers_file.read_text())
        equal = sum(a.strip() == t["answer"].strip() for a, t in zip(ours, theirs["rows"], strict=True))
        chat_equal = sum(
            a.strip() == (t["chat"] or "").strip() for a, t in zip(ours, theirs["rows"], strict=True)
        )
        same_ids = sum(i == t["ids"] for i, t in zip(our_ids, theirs["rows"], strict=True))
        accuracy = sum(
            t["answer"].strip().startswith(r["target"]) for t, r in zip(theirs["rows"], rows, strict=True)
        )
        share = equal / len(rows)
        ok &= share >= NEEDED.get(quant, 0.9)
        results.append({
            "quant": quant, "rows": len(rows), "equal_answers": equal, "share": share, "same_prompt_ids": same_ids,
            "chat_endpoint_equal": chat_equal,
            "llamacpp_label_accuracy": accuracy / len(rows), "export_seconds": round(export_seconds, 1),
            "llamacpp_seconds": round(theirs["seconds"], 1), "export_check": check.strip(),
            "examples": [(a, t["answer"]) for a, t in zip(ours, theirs["rows"], strict=False)][:3],
        })  # fmt: skip
    finetune_accuracy = sum(a.strip().startswith(r["target"]) for a, r in zip(ours, rows, strict=True)) / len(
        rows
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(rows)} rows of {args.data.name}, run {args.run}"
    )
    print(f"finetune generate: label accuracy {finetune_accuracy:.3f}, {our_seconds:.1f} s for all rows")
    print(
        "| quant | equal answers | chat endpoint equal | same prompt ids | llama.cpp label accuracy | export s | llama.cpp s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "failed" in r:
            print(f"| {r['quant']} | llama.cpp exited {r['failed']} | | | | | |")
            continue
        print(
            f"| {r['quant']} | {r['equal_answers']}/{r['rows']} ({r['share']:.0%}) | "
            f"{r['chat_endpoint_equal']}/{r['rows']} | {r['same_prompt_ids']}/{r['rows']} | "
            f"{r['llamacpp_label_accuracy']:.3f} | {r['export_seconds']} | {r['llamacpp_seconds']} |"
        )
    for r in results:
        print(f"{r['quant']}: {r['export_check']}")
        if "examples" in r:
            print(f"{r['quant']}: first answers (finetune, llama.cpp): {r['examples']}")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
