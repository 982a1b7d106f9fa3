"""A local transformers model as the teacher (the paper's "llama2-7b-chat as teacher" row).

The pipeline calls `complete()` from `--concurrency` asyncio workers, one prompt each. Generating
them one by one would leave a GPU mostly idle, so the calls are gathered into batches of up to
`--concurrency` prompts and generated together. Batched generation needs *left* padding: new
tokens are appended on the right, and with right padding they would follow pad tokens (loading,
dtype/device policy and batched decoding are `data_gen.llm.local`'s, shared with `nif eval`). The
model runs in a worker thread so the event loop stays free to write shards and time out nothing.

Greedy at temperature 0 (the paper's setting); sampling otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from data_gen.llm.client import Completion, Teacher
from data_gen.llm.config import TeacherConfig
from data_gen.llm.errors import RequestFailed
from data_gen.llm.local import generate_batched, load_for_generation

# How long the batcher waits for more prompts after the first: long enough for the other
# workers (woken by the previous batch's results) to queue theirs, short next to a generate().
_GATHER_S = 0.01


class HFTeacher(Teacher):
    """Batched greedy generation with a transformers causal LM, in a worker thread."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        self.name = f"hf:{cfg.model}"
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # one entry per generate() call (stats and tests)

    async def __aenter__(self) -> HFTeacher:
        self._model, self._tok = await asyncio.to_thread(self._load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def _load(self):
        # dtype and device "auto": the policy of data_gen.llm.local (half precision on GPUs).
        try:
            return load_for_generation(self.cfg.model)
        except (OSError, ValueError) as err:
            raise ValueError(f"`--model {self.cfg.model}`: cannot load it: {err}") from err

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        if self._queue is None:
            raise RuntimeError("use the hf teacher inside `async with make_teacher(cfg)`")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt, future))
        return await future

    async def _run_batches(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(_GATHER_S)
            while len(batch) < self.cfg.concurrency and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.batch_sizes.append(len(batch))
            try:
                results = await asyncio.to_thread(self.generate_batch, [p for p, _ in batch])
            except Exception as err:  # noqa: BLE001 - reported per document, the run goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RequestFailed(f"generation failed: {err}"))
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def generate_batch(self, prompts: list[str]) -> list[Completion]:
        """Continue `prompts` together (left-padded, an over-long prompt keeping its end, which
        is continued); one Completion per prompt."""
        gens = generate_batched(
            self._model,
            self._tok,
            prompts,
            max_new_tokens=self.cfg.max_tokens,
            batch_size=len(prompts),
            temperature=self.cfg.temperature,
        )
        return [
            Completion(g.text, "stop" if g.stopped else "length", g.prompt_tokens, g.new_tokens)
            for g in gens
        ]
