"""`make_teacher`: the registry from a config's `kind` to its client class.

The one module that knows every client, so none of them imports another: the HTTP clients are
imported here, the `hf` one only when asked for (it needs torch), and `hf.py` imports only the
base class, the config and the errors.
"""

from __future__ import annotations

from data_gen.llm.client import OriginalTeacher, Teacher
from data_gen.llm.config import TeacherConfig
from data_gen.llm.wire import AnthropicTeacher, OpenAIChatTeacher, OpenAICompletionsTeacher


def make_teacher(cfg: TeacherConfig) -> Teacher:
    """The teacher `cfg` describes; use it as `async with make_teacher(cfg) as teacher:`."""
    if cfg.kind == "hf":
        from data_gen.llm.hf import HFTeacher  # imports torch only when asked for

        return HFTeacher(cfg)
    teachers = {
        "original": OriginalTeacher,
        "openai": OpenAIChatTeacher,
        "openai-completions": OpenAICompletionsTeacher,
        "anthropic": AnthropicTeacher,
    }
    return teachers[cfg.kind](cfg)
