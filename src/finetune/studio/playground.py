"""The playground: a run's model (or its base) answering in the run's training format, streamed.

Models load on first use through `inference.generate.load` (torch is imported then, not at start) and stay
loaded; one answer is generated at a time (a model is not shared between threads)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from finetune.errors import UserError
from finetune.inference import generate


class Playground:
    def __init__(self):
        self.models: dict[tuple[str, bool], object] = {}
        self.lock = threading.Lock()

    def _model(self, folder: Path, base_only: bool):
        key = (str(folder), base_only)
        if key not in self.models:
            self.models[key] = generate.load(folder, base_only=base_only, say=lambda m: None)
        return self.models[key]

    def stream(
        self, folder: Path, base_only: bool, prompt: str, system: str | None, max_new_tokens: int,
        temperature: float,
    ) -> Iterator[str]:  # fmt: skip
        """Text pieces of the answer as they are generated; it stops at the format's end of turn."""
        pieces: queue.Queue = queue.Queue()
        done = object()

        def work():
            try:
                with self.lock:
                    loaded = self._model(folder, base_only)
                    ids = generate.question_prompt(
                        loaded.cfg, loaded.dataset, loaded.tokenizer, prompt, system
                    )
                    generate.answer(loaded, ids, max_new_tokens, temperature, write=pieces.put)
            except UserError as exc:
                pieces.put("\n[" + "; ".join(exc.problems) + "]")
            finally:
                pieces.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (piece := pieces.get()) is not done:
            yield piece
