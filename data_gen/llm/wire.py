"""The wire formats: the request body each HTTP teacher sends and how it reads the answer.

    openai              /v1/chat/completions; the first half is the user message, no instruction
    openai-completions  /v1/completions, raw text in and out (base-model servers such as vLLM)
    anthropic           /v1/messages, with the paper's system prompt by default

Everything else (retries, limits, the fleet) is the shared engine in `client.py`.
"""

from __future__ import annotations

from typing import Any

from data_gen.llm.client import Completion, _HttpTeacher

ANTHROPIC_VERSION = "2023-06-01"


def _openai_completion(body: dict[str, Any], text_of) -> Completion:
    """The first choice of an OpenAI-format body; `text_of(choice)` differs by endpoint."""
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return Completion(
        str(text_of(choice)),
        str(choice.get("finish_reason") or "unknown"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


class OpenAIChatTeacher(_HttpTeacher):
    """/v1/chat/completions: the first half is the user message, with no instruction."""

    path = "/chat/completions"

    def payload(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        system = self.cfg.effective_system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def parse(self, body: dict[str, Any]) -> Completion:
        return _openai_completion(body, lambda choice: choice["message"].get("content") or "")


class OpenAICompletionsTeacher(_HttpTeacher):
    """/v1/completions: raw text in, raw text out (what a base model wants)."""

    path = "/completions"

    def payload(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "prompt": prompt,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def parse(self, body: dict[str, Any]) -> Completion:
        return _openai_completion(body, lambda choice: choice["text"])


class AnthropicTeacher(_HttpTeacher):
    """/v1/messages with `x-api-key` and `anthropic-version`; stop reasons mapped to OpenAI's."""

    path = "/messages"
    _STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._key:
            headers["x-api-key"] = self._key
        return headers

    def payload(self, prompt: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }
        system = self.cfg.effective_system_prompt
        if system:
            payload["system"] = system
        return payload

    def parse(self, body: dict[str, Any]) -> Completion:
        if body.get("type") == "error":
            raise ValueError("error body with status 200")
        text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
        usage = body.get("usage") or {}
        stop = str(body.get("stop_reason") or "unknown")
        return Completion(
            text,
            self._STOP.get(stop, stop),
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )
