"""The LLM client layer shared by `nif gen` (the teacher), `nif filter` and `nif eval` (the judge).

    config.py     TeacherConfig: which API, model, servers, limits (no I/O when built)
    errors.py     RequestFailed (this item) / RunStopped (the whole run) and their kinds
    client.py     the client base class and the HTTP engine: retries, rate limits, server fleet
    wire.py       the request and answer formats of OpenAI chat / completions and Anthropic
    factory.py    make_teacher: kind -> client (the hf client imported only when asked for)
    fanout.py     fan_out: one worker pool over many prompts, stopping on RunStopped
    hf.py         a local transformers model as a client, batched
    batch.py      the providers' batch APIs (half price, answers within 24 h)
    retry.py, ratelimit.py   the retry policy and the RPM/TPM limiter
    local.py      loading a local causal LM and greedy decoding (shared with nif_lightning)

Importing this package does not import aiohttp or torch.
"""

from data_gen.llm.client import Completion, Teacher
from data_gen.llm.config import BATCH_KINDS, KINDS, PAPER_SYSTEM_PROMPT, TeacherConfig
from data_gen.llm.errors import (
    AuthFailed,
    RequestFailed,
    RunStopped,
    SpendLimitReached,
    TeacherError,
)
from data_gen.llm.factory import make_teacher
from data_gen.llm.fanout import fan_out

__all__ = [
    "BATCH_KINDS",
    "KINDS",
    "PAPER_SYSTEM_PROMPT",
    "AuthFailed",
    "Completion",
    "RequestFailed",
    "RunStopped",
    "SpendLimitReached",
    "Teacher",
    "TeacherConfig",
    "TeacherError",
    "fan_out",
    "make_teacher",
]
