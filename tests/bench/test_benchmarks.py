"""The benchmarks run end to end on CPU with small settings, so they cannot rot, and their rows
hold figures that are physically possible. (Speed itself is never asserted.)"""

from __future__ import annotations

from benchmarks import bench_gen, bench_lora_kernel, bench_memory, bench_train


def test_bench_gen_rows():
    rows = bench_gen.main(
        ["--latency", "0.05", "0", "--concurrency", "4", "--rounds", "3", "--requests", "40"]
        + ["--reps", "1", "--no-write"]
    )
    assert [(r["latency_s"], r["concurrency"]) for r in rows] == [(0.05, 4), (0.0, 4)]
    for r in rows:
        assert r["baseline_per_s"] > 0 and r["teacher_per_s"] > 0 and r["ours_per_s"] > 0
    # With C requests in flight, each taking >= the latency, no client beats C / latency.
    slow = rows[0]
    assert slow["little_bound_per_s"] == 4 / 0.05
    assert slow["ours_vs_bound"] <= 1.0 and slow["baseline_per_s"] <= slow["little_bound_per_s"]


def test_bench_lora_kernel_rows():
    rows = bench_lora_kernel.main(["--quick", "--no-write"])
    assert len(rows) == 4  # 2 projections x 2 ranks
    for r in rows:
        for name in ("ours", "peft", "unfused"):
            assert r[f"{name}_fwd_ms"] > 0 and r[f"{name}_fwdbwd_ms"] > 0
        # On a CPU "ours" must be the torch path in fp32 (Triton would only run interpreted).
        assert r["ours_path"] == "torch" and r["dtype"] == "float32"
        assert r["roofline"] is None and not r["autocast"]  # a CPU has no peak table entry


def test_bench_train_rows():
    rows = bench_train.main(
        ["--steps", "1", "--rounds", "1", "--samples", "48", "--cutoff", "256"]
        + ["--micro-batch", "2", "--no-write"]
    )
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"a_hf_peft_padded", "b_ours_padded", "c_ours_packed", "ratios"}
    assert by["c_ours_packed"]["non_padding_share"] == 1.0  # packing computes no padding
    padded = by["b_ours_padded"]["non_padding_share"]
    assert padded == by["a_hf_peft_padded"]["non_padding_share"] and 0 < padded < 1
    assert 0.5 < by["ratios"]["packed_budget_fill"] <= 1.0
    for v in ("a_hf_peft_padded", "b_ours_padded", "c_ours_packed"):
        assert 0 < by[v]["tokens_per_s"] <= by[v]["processed_tokens_per_s"]


def test_synthetic_1b_has_a_1b_class_shape():
    import torch
    from transformers import LlamaForCausalLM

    from nif_lightning.tiny_model import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    with torch.device("meta"):  # the shape only: no memory, no time
        model = LlamaForCausalLM(bench_train.synthetic_1b_config(tok))
    params = sum(p.numel() for p in model.parameters())
    assert 1.2e9 < params < 1.3e9  # Llama-3.2-1B: 1.24B with tied embeddings
    assert len(tok) < model.config.vocab_size  # every token id the samples use is in range


def test_bench_memory_rows():
    rows = bench_memory.main(["--quick", "--no-write"])
    plans = [r for r in rows if r["kind"] == "plan"]
    probes = [r for r in rows if r["kind"] == "probe"]
    assert [r["gpu"] for r in plans] == list(bench_memory.GPUS_GB)  # one recipe x every GPU
    for r in plans:
        parts = sum(r[f"{k}_gb"] for k in bench_memory._TERMS if k != "total")
        assert abs(parts - r["total_gb"]) < 0.01
        assert r["fits"] == (r["total_gb"] <= r["capacity_gb"])
    by_gpu = {r["gpu"]: r for r in plans}
    assert by_gpu["v100-32gb"]["fits"] and not by_gpu["v100-16gb"]["fits"]
    # The meta probe and the real layer on this CPU run the same code but for the attention
    # kernel: the saved bytes and the forward + backward peaks agree.
    (probe,) = probes
    assert probe["dtype"] == "float32" and probe["measured_saved_mib"] > 0
    assert abs(probe["saved_ratio"] - 1) < 0.02 and abs(probe["peak_ratio"] - 1) < 0.05
