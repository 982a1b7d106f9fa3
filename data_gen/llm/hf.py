"""A local transformers model as the teacher (the paper's "llama2-7b-chat as teacher" row).

The pipeline calls `complete()` from `--concurrency` asyncio workers, one prompt each. Generating
them one by one would leave a GPU mostly idle, so the calls are gathered into batches of up to
`--concurrency` prompts and generated together. Batched generation needs *left* padding: new
tokens are appended on the right, and with right padding they would follow pad tokens. The
model runs in a worker thread so the event loop stays free to write shards and time out nothing.

Greedy at temperature 0 (the paper's setting); sampling otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from data_gen.llm.client import Completion, Teacher
from data_gen.llm.config import TeacherConfig
from data_gen.llm.errors import RequestFailed

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
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(self.cfg.model)
            cuda = torch.cuda.is_available()
            model = AutoModelForCausalLM.from_pretrained(
                self.cfg.model, dtype=torch.bfloat16 if cuda else torch.float32
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"`--model {self.cfg.model}`: cannot load it: {err}") from err
        tok.padding_side = "left"
        tok.truncation_side = "left"  # an over-long prompt keeps its end, which is continued
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.to("cuda" if cuda else "cpu").eval()
        return model, tok

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
        """Continue `prompts` together (left-padded); one Completion per prompt."""
        import torch

        tok, model = self._tok, self._model
        room = getattr(model.config, "max_position_embeddings", None)
        max_len = max(1, room - self.cfg.max_tokens) if room else None
        enc = tok(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=max_len is not None,
            max_length=max_len,
        ).to(model.device)
        sampling = self.cfg.temperature > 0
        extra = {"temperature": self.cfg.temperature} if sampling else {}
        with torch.no_grad():
            out = model.generate(  # (B, T_prompt + new)
                **enc,
                max_new_tokens=self.cfg.max_tokens,
                do_sample=sampling,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **extra,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()  # (B, new)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()  # (B,)
        results = []
        for row, n_prompt in zip(new, prompt_lens, strict=True):
            stopped = tok.eos_token_id in row
            ids = row[: row.index(tok.eos_token_id)] if stopped else row
            results.append(
                Completion(
                    tok.decode(ids, skip_special_tokens=True),
                    "stop" if stopped else "length",
                    int(n_prompt),
                    len(ids),
                )
            )
        return results
