"""The preview stage: greedy, deterministic, EOS handling, and clear errors for bad settings."""

import pytest

from nif_lightning.config import PreviewConfig
from nif_lightning.preview import compare_models, greedy_replies


def test_same_model_gives_the_same_greedy_answers(tiny):
    prompts = ["Explain what a list is.", "Write a poem."]
    settings = PreviewConfig(prompts=prompts, max_new_tokens=8)
    records = compare_models(tiny, tiny, settings)
    assert [r["prompt"] for r in records] == settings.prompts
    for r in records:
        assert r["base"] == r["tuned"]
        assert 0 <= r["base_tokens"] <= 8
        if not r["base_stopped"]:
            assert r["base_tokens"] == 8  # no EOS: ran to the cap


def test_reply_stops_at_eos(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    # Make EOS the argmax everywhere: every hidden state is all-ones (constant embeddings, the
    # layers' residual branches zeroed), and only the EOS row of lm_head sees it.
    model = AutoModelForCausalLM.from_pretrained(tiny)
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[eos] = 1.0
    model.save_pretrained(tiny.parent / "eos-model")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny).save_pretrained(tiny.parent / "eos-model")
    (reply,) = greedy_replies(tiny.parent / "eos-model", ["Hello there"], max_new_tokens=5)
    assert reply.stopped and reply.new_tokens == 0 and reply.text == ""


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"prompts": ["ok", " "]}, "preview.prompts"), ({"max_new_tokens": 0}, "max_new_tokens")],
)
def test_bad_settings_name_the_key(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        PreviewConfig(**kwargs)


@pytest.mark.gpu
def test_replies_on_the_gpu_in_half_precision(tiny, monkeypatch):
    """On CUDA the preview stage runs the models in half precision on the GPUs (an 8B model in
    fp32 on the CPU would take the node's memory and minutes per prompt)."""
    import torch
    from transformers import AutoModelForCausalLM

    loads = []
    load = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model = load(*args, **kwargs)
        loads.append((model.dtype, model.device.type))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    # Other GPU tests in this process may hold memory of their own (measured: 65 MiB on an
    # H100 after the kernel tests): judge what this call leaves behind.
    before = torch.cuda.memory_allocated()
    replies = greedy_replies(tiny, ["Explain what a list is."], max_new_tokens=6)
    assert len(replies) == 1 and 0 <= replies[0].new_tokens <= 6
    assert loads == [(loads[0][0], "cuda")] and loads[0][0] in (torch.float16, torch.bfloat16)
    assert torch.cuda.memory_allocated() - before < 2**20  # the model was let go afterwards
