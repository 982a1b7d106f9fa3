#!/usr/bin/env bash
# Everything only a GPU can show, in one go: the GPU tests (compiled Triton kernels in fp16 and
# bf16, DeepSpeed fp16 training), then the kernel and training benchmarks, whose rows (with the
# device name) are appended to benchmarks/results/. Needs no network: the 1B-class training
# benchmark uses random weights of Llama-3.2-1B's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv
python -m pytest -m gpu -v
python -m benchmarks.bench_lora_kernel
python -m benchmarks.bench_train --model synthetic-1b --dtype float16 --steps 20 --cutoff 1024
