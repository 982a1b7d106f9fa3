"""Greedy answers from a model to (multi-turn) questions, cached to jsonl so a kill resumes.

Turn k of a question is asked with the question's earlier turns and the model's own earlier
answers in the context, as MT-Bench does. Answers are written to the cache file one batch at a
time (`{"id", "turn", "answer"}` per line), so an interrupted run re-asks only what is missing,
and a fully cached run never loads the model at all.

Prompt templates (the paper's Table 1 "Template" column):
    chat      the tokenizer's own chat template (Instruct/chat models)
    one_shot  a plain "### Human: / ### Assistant:" exchange with one worked example first,
              as FastChat's `one_shot` does for base models
    vanilla   the question text alone, the answer continuing it: the format the model was
              fine-tuned on (`vanilla` training template)
"""

from __future__ import annotations

from pathlib import Path

from data_gen.llm.local import greedy_generate, load_for_generation
from data_gen.store import JsonlCache
from nif_lightning.evaluation.config import TEMPLATES, GenerateConfig

# Our own one-shot example (not FastChat's text): short, neutral and self-contained.
_ONE_SHOT_SYSTEM = (
    "A conversation between a curious person and a helpful assistant. The assistant answers "
    "clearly and stops when the answer is complete."
)
_ONE_SHOT_EXAMPLE = (
    ("Human", "How long should I boil an egg for a runny yolk?"),
    (
        "Assistant",
        "Put the egg into water that is already boiling and take it out after about six "
        "minutes, then cool it briefly under cold water so it stops cooking.",
    ),
)
_ONE_SHOT_STOP = "\n### "


def resolve_template(template: str, model: str) -> str:
    """`auto` -> chat if the model's tokenizer has a chat template, else one_shot."""
    if template != "auto":
        return template
    from transformers import AutoTokenizer

    has_chat = bool(getattr(AutoTokenizer.from_pretrained(model), "chat_template", None))
    return "chat" if has_chat else "one_shot"


def format_prompt(template: str, turns: list[str], answers: list[str], tokenizer=None) -> str:
    """The text the model continues to answer `turns[-1]`, given its `answers` to the earlier
    turns (len(answers) == len(turns) - 1)."""
    if len(answers) != len(turns) - 1:
        raise ValueError("format_prompt needs one answer per earlier turn")
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "`--template chat`: this tokenizer has no chat template; "
                "use `--template one_shot` or `--template vanilla` for a base model"
            )
        messages = []
        for q, a in zip(turns[:-1], answers, strict=True):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": turns[-1]})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template == "one_shot":
        parts = [_ONE_SHOT_SYSTEM]
        parts += [f"### {role}: {text}" for role, text in _ONE_SHOT_EXAMPLE]
        for q, a in zip(turns[:-1], answers, strict=True):
            parts += [f"### Human: {q}", f"### Assistant: {a}"]
        parts += [f"### Human: {turns[-1]}", "### Assistant:"]
        return "\n".join(parts)
    if template == "vanilla":
        history = [x for q, a in zip(turns[:-1], answers, strict=True) for x in (q, a)]
        return "\n\n".join([*history, turns[-1]]) + "\n\n"
    raise ValueError(f"`--template` must be one of {TEMPLATES}, got {template!r}")


def _clean(template: str, text: str) -> str:
    if template == "one_shot":
        text = text.split(_ONE_SHOT_STOP, 1)[0]  # the model went on to write the next turn
    return text.strip()


def read_cache(path: Path) -> dict[tuple[str, int], str]:
    """(id, turn) -> answer, from the answer cache; a line cut short by a kill is ignored."""
    return {(str(r["id"]), int(r["turn"])): r["answer"] for r in JsonlCache(path).read()}


class _Model:
    """The model and tokenizer, loaded on first use (a fully cached run never loads them)."""

    def __init__(self, cfg: GenerateConfig) -> None:
        self.model, self.tokenizer = load_for_generation(
            cfg.model, dtype=cfg.dtype, device=cfg.device
        )

    def generate(self, prompts: list[str], cfg: GenerateConfig) -> list[str]:
        # The chat template writes its own special tokens; vanilla training used no BOS.
        texts = greedy_generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=len(prompts),
            add_special_tokens=cfg.template == "one_shot",
        )
        return [_clean(cfg.template, t) for t in texts]


def generate_answers(
    cfg: GenerateConfig,
    questions: list[tuple[str, list[str]]],
    cache_path: str | Path,
) -> dict[str, list[str]]:
    """Answers to every turn of every `(id, turns)` question; id -> one answer per turn."""
    if cfg.template not in TEMPLATES:
        raise ValueError("generate_answers needs a resolved template (see resolve_template)")
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache(cache_path)
    model: _Model | None = None
    max_turns = max((len(t) for _, t in questions), default=0)
    with JsonlCache(cache_path).open_for_append() as cache:
        for turn in range(max_turns):
            todo = [(qid, t) for qid, t in questions if len(t) > turn and (qid, turn) not in done]
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                if model is None:
                    model = _Model(cfg)
                prompts = [
                    format_prompt(
                        cfg.template,
                        t[: turn + 1],
                        [done[(qid, k)] for k in range(turn)],
                        model.tokenizer,
                    )
                    for qid, t in batch
                ]
                for (qid, _), answer in zip(batch, model.generate(prompts, cfg), strict=True):
                    done[(qid, turn)] = answer
                    cache.append({"id": qid, "turn": turn, "answer": answer})
    return {qid: [done[(qid, k)] for k in range(len(t))] for qid, t in questions}
