"""`nif train` under the real DeepSpeed engine on 2 CPU ranks (DeepSpeed's CPU accelerator, gloo).

The same engine, ZeRO partitioning, fp16 loss scaler and checkpoint format as on a V100 node:
ZeRO-2 and ZeRO-3 in fp16 and bf16 train and export a stock PEFT adapter that matches `merged/`;
ZeRO-3's adapter equals ZeRO-2's; `--resume` from the DeepSpeed checkpoint folder continues with
the next batch (after every rank died at step 2, the resumed adapter equals a straight run's);
an fp16 overflow that never ends stops the run with LossScaleGuard's message (and bf16, which
has no loss scale, is left alone); checkpoints hold only LoRA params; and under ZeRO-3 each rank
holds about half of a 1 GB model while loading it.

Each run is a real `nif train` process tree (tests/train/ds_driver.py, which only lifts
DeepSpeed's CPU fp16 refusal). About 25 s a run on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nif_lightning.report import read_metrics, training_figures

pytest.importorskip("deepspeed")

DRIVER = Path(__file__).with_name("ds_driver.py")
STEPS = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny, write_builtin_shard, deepspeed_on_cpu):
    """A folder with the tiny model (`tiny/`) and a small dataset (`data/`) the runs share."""
    root = tmp_path_factory.mktemp("ds")
    (root / "tiny").symlink_to(tiny)
    write_builtin_shard(root / "data", rows=48, prompt_chars=160, completion_chars=160)
    return root


def _config(
    workdir: Path,
    name: str,
    *,
    stage: int,
    precision: str,
    steps: int = STEPS,
    model: Path | None = None,
    model_settings: dict | None = None,
    trainer: dict | None = None,
    data: dict | None = None,
    optim: dict | None = None,
) -> Path:
    """A `nif train` config for run `name` (OUT: workdir/name); `trainer`, `data`, `optim`
    override the defaults here."""
    config = workdir / f"{name}.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "path": str(model or workdir / "tiny"),
                    "dtype": "float32",
                    **(model_settings or {}),
                },
                "data": {
                    "dir": str(workdir / "data"),
                    "cutoff_len": 96,
                    "micro_batch_size": 2,
                    **(data or {}),
                },
                "optim": {"lr": 5.0e-3, "warmup_ratio": 0.0, **(optim or {})},
                "trainer": {
                    "strategy": "deepspeed",
                    "zero_stage": stage,
                    "precision": precision,
                    "devices": 2,
                    "max_steps": steps,
                    "val_check_interval": 2,
                    "log_every_n_steps": 1,
                    **(trainer or {}),
                },
                "out": str(workdir / name),
                "seed": 0,
            }
        )
    )
    return config


def _train(
    workdir: Path,
    name: str,
    *,
    resume: bool = False,
    env: dict | None = None,
    check: bool = True,
    **settings,
) -> subprocess.CompletedProcess:
    """`nif train` (through the driver) with `_config(workdir, name, **settings)`."""
    config = _config(workdir, name, **settings)
    argv = [sys.executable, str(DRIVER), "train", "--config", str(config)]
    if resume:
        argv.append("--resume")
    proc = subprocess.run(
        argv,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"nif train {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def zero2_fp16(workdir):
    _train(workdir, "z2-fp16", stage=2, precision="16-mixed")
    return workdir / "z2-fp16"


@pytest.fixture(scope="module")
def zero3_fp16(workdir):
    _train(workdir, "z3-fp16", stage=3, precision="16-mixed")
    return workdir / "z3-fp16"


@pytest.mark.parametrize("run", ["zero2_fp16", "zero3_fp16"])
def test_the_exported_peft_adapter_matches_merged(run, workdir, request):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(run)
    adapter = _adapter(folder)
    assert adapter and all("lora_" in k for k in adapter)
    b = [v for k, v in adapter.items() if "lora_B" in k]
    # Trained (B starts at zero), and whole: ZeRO-3 export gathers the partitions.
    assert b and all(v.abs().sum() > 0 for v in b) and all(v.shape[1] == 8 for v in b)
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(workdir / "tiny"), folder / "adapter"
    )
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("run", ["zero2_fp16", "zero3_fp16"])
def test_deepspeed_checkpoints_hold_only_lora_params(run, request):
    folder = request.getfixturevalue(run)
    states = sorted((folder / "checkpoints" / "last.ckpt").rglob("*model_states.pt"))
    assert states, "no DeepSpeed model-states file in the checkpoint folder"
    for path in states:
        module = torch.load(path, map_location="cpu", weights_only=False)["module"]
        assert module and all("lora_" in k for k in module), sorted(module)[:5]


def test_zero3_adapter_equals_zero2(zero2_fp16, zero3_fp16, workdir):
    from transformers import AutoModelForCausalLM

    z2, z3 = _adapter(zero2_fp16), _adapter(zero3_fp16)
    assert z2.keys() == z3.keys()
    # Same seed, data and fp16 arithmetic; only the order of the reductions differs. Adam's first
    # steps are sign-like, so an element whose gradient is ~0 may move either way: compare the
    # update as a whole (B starts at zero) and what it does to the model, not element by element.
    b2 = torch.cat([v.float().flatten() for k, v in z2.items() if "lora_B" in k])
    b3 = torch.cat([z3[k].float().flatten() for k in z2 if "lora_B" in k])
    assert torch.nn.functional.cosine_similarity(b2, b3, dim=0) > 0.995
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, m2, m3 = (
            AutoModelForCausalLM.from_pretrained(path)(ids).logits
            for path in (workdir / "tiny", zero2_fp16 / "merged", zero3_fp16 / "merged")
        )
    # Measured: the two runs' logits differ by ~1% of what training changed in them.
    assert (m3 - m2).norm() < 0.03 * (m2 - base).norm()


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_from_the_deepspeed_checkpoint_folder_continues(stage, workdir, request):
    straight = _adapter(request.getfixturevalue(f"zero{stage}_fp16"))
    name = f"z{stage}-resume"
    crash = {"NIF_TEST_CRASH_AT_STEP": str(STEPS // 2)}  # after the step-2 checkpoint
    proc = _train(workdir, name, stage=stage, precision="16-mixed", env=crash, check=False)
    assert proc.returncode == 17, proc.stderr[-3000:]
    assert (workdir / name / "checkpoints" / "last.ckpt").is_dir()  # DeepSpeed's folder
    _train(workdir, name, stage=stage, precision="16-mixed", resume=True)
    resumed = _adapter(workdir / name)
    for key in straight:
        # The same batches in the same order from the restored optimizer and loss scale: a
        # resumed run that repeated or skipped a batch would land elsewhere.
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-5, rtol=1e-4, msg=key)


def test_zero3_with_activation_checkpointing_matches_without(zero3_fp16, workdir):
    """Non-reentrant checkpointing recomputes each layer while ZeRO-3 re-gathers its frozen
    weights (the recipe's 70B setting; older DeepSpeed failed here with a saved-vs-recomputed
    shape mismatch)."""
    _train(
        workdir,
        "z3-ckpt",
        stage=3,
        precision="16-mixed",
        model_settings={"gradient_checkpointing": True},
    )
    plain, ckpt = _adapter(zero3_fp16), _adapter(workdir / "z3-ckpt")
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_trains(workdir, stage):
    _train(workdir, f"z{stage}-bf16", stage=stage, precision="bf16-mixed", steps=2)
    adapter = _adapter(workdir / f"z{stage}-bf16")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_endless_fp16_overflow_stops_with_loss_scale_guard(workdir):
    proc = _train(
        workdir,
        "overflow",
        stage=2,
        precision="16-mixed",
        steps=40,
        env={"NIF_TEST_OVERFLOW": "1"},
        check=False,
    )
    assert proc.returncode != 0
    assert "fp16 loss scale collapsed to 1.0" in proc.stderr, proc.stderr[-3000:]
    # Every skipped step is said, once (rank 0), with its step and the new scale (2^16, halved
    # from the second overflow on: hysteresis 2), 17 in all down to scale 1: the first 5 at
    # once, later ones one a minute, and those held back counted (in a later line, or at the end).
    pattern = r"fp16 overflow at step (\d+): .*loss scale now (\S+); (\d+) skipped so far"
    said = [
        tuple(map(int, (step, float(scale), count)))
        for step, scale, count in re.findall(pattern, proc.stderr)
    ]
    assert said[:5] == [(i, 2 ** min(16, 17 - i), i) for i in range(1, 6)], said
    assert all(scale == 2 ** min(16, 17 - step) and count == step for step, scale, count in said)
    held = [int(n) for n in re.findall(r"\((\d+) more not shown\)", proc.stderr)]
    held += [
        int(n)
        for n in re.findall(
            r"(\d+) more fp16 overflows? not shown one by one; 17 steps skipped in all", proc.stderr
        )
    ]
    assert len(said) + sum(held) == 17, (said, held)
    rows = read_metrics(workdir / "overflow" / "logs")
    counts = {int(r["step"]): r["train/skipped_steps"] for r in rows if "train/skipped_steps" in r}
    assert counts == {step: step + 1.0 for step in range(17)}  # a row at every skipped step
    assert training_figures(rows)["fp16_skipped_steps"] == 17


# zero.Init broadcasts every new parameter from rank 0 (gloo on CPU ranks). glibc may keep the
# memory that gloo's threads free in per-thread arenas: with its defaults rank 1's anonymous
# memory sometimes ends ~0.3 x the model higher than what it holds (measured 0.79 vs rank 0's
# 0.50, in 2 of 4 runs). One arena, a fixed mmap threshold and eager trimming make the count
# what the process holds (0.507 on both ranks). On GPUs the broadcast is NCCL's, on the device.
_GLIBC_RETURNS_FREED_MEMORY = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "0",
}


def test_zero3_loads_each_rank_a_half_of_the_weights(workdir):
    """A 1.08 GB fp32 model on 2 ranks: anonymous memory per rank grows by ~its half while the
    model is built and loaded (file-backed pages of the mmapped checkpoint are shared), and
    every partition holds exactly its range of the file (the MLP's 4095 rows put a row across
    the two ranks' boundary)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder = workdir / "big"
    folder.mkdir()
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=1030,
        intermediate_size=4095,
        num_hidden_layers=16,
        num_attention_heads=5,
        num_key_value_heads=5,
        tie_word_embeddings=False,
    )
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (workdir / "tiny" / name).exists():
            shutil.copy(workdir / "tiny" / name, folder / name)
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).named_parameters()}
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    model_bytes = sum(t.nbytes for t in tensors.values())
    assert model_bytes >= 1e9
    save_file(tensors, str(folder / "model.safetensors"))
    del tensors
    logs = workdir / "memlog"
    logs.mkdir()
    _train(
        workdir,
        "z3-big",
        stage=3,
        precision="32-true",
        steps=1,
        model=folder,
        env={"NIF_TEST_MEMLOG": str(logs), **_GLIBC_RETURNS_FREED_MEMORY},
    )
    for rank in (0, 1):
        record = json.loads((logs / f"rank{rank}.json").read_text())
        assert record["partitioned"]
        assert record["checked"] == len(shapes) and record["mismatched"] == []
        growth = record["peak"] - record["before"]
        assert growth <= 0.65 * model_bytes, (rank, growth / model_bytes)


# ---- DeepSpeed trains what Lightning without it trains: gradient scale and step counts ----------

# 28 rows in packed batches of at most 200 tokens: 14 batches an epoch, 7 per rank on 2 ranks,
# so with accumulation 2 or 4 each epoch's last step needs the fill. Plain SGD makes an update
# the learning rate times the clipped gradient; clipping at 0.05 is active (the norms are
# ~0.15). Validation every 0.375 of an epoch (3 of 8 batches) falls inside an accumulation.
_EXACT = {
    "precision": "32-true",
    "data": {"max_tokens_per_batch": 200},
    "optim": {"lr": 0.5},
    "trainer": {
        "max_steps": -1,
        "max_epochs": 2,
        "gradient_clip_val": 0.05,
        "val_check_interval": 0.375,
    },
}


@pytest.fixture(scope="module")
def exact(workdir, write_builtin_shard):
    """`run(name, accumulation, stage=2, env=None, resume=False, **trainer)`: a 2-epoch SGD run
    on the odd dataset; returns its OUT and the driver's end records (`NIF_TEST_RECORD`), one
    per rank. Runs without `env` or `resume` are made once per name."""
    data = write_builtin_shard(
        workdir / "data-odd", rows=28, prompt_chars=160, completion_chars=160
    )
    done: dict[str, tuple[Path, list[dict]]] = {}

    def run(name, accumulation, stage=2, env=None, resume=False, **trainer):
        if name in done and not (env or resume):
            return done[name]
        record = workdir / f"{name}.jsonl"
        proc = _train(
            workdir,
            name,
            stage=stage,
            precision=_EXACT["precision"],
            data={**_EXACT["data"], "dir": str(data)},
            optim=_EXACT["optim"],
            trainer={**_EXACT["trainer"], "accumulate_grad_batches": accumulation, **trainer},
            env={"NIF_TEST_SGD": "1", "NIF_TEST_RECORD": str(record), **(env or {})},
            resume=resume,
            check=not env,
        )
        ends = sorted((e for e in _records(record) if "global_step" in e), key=lambda e: e["rank"])
        if not (env or resume):
            done[name] = workdir / name, ends
        return (workdir / name, ends) if not env else proc

    run.data = data
    return run


@pytest.fixture(scope="module")
def without_deepspeed(exact):
    """The reference runs: 1 process, Lightning's own loop, accumulation 2N (the same global
    batch as 2 DeepSpeed ranks x N)."""
    return lambda n: exact(f"plain-acc{2 * n}", 2 * n, strategy="auto", devices=1)


def _grad_norms(out: Path) -> dict[int, float]:
    return {
        int(r["step"]): r["train/grad_norm"]
        for r in read_metrics(out / "logs")
        if "train/grad_norm" in r
    }


def _steps_per_epoch(data: Path, tiny: Path, ranks: int, accumulation: int) -> list[int]:
    """Optimizer steps of each of the 2 epochs, counted from the DataModule's own packing."""
    from nif_lightning.config import DataConfig
    from nif_lightning.data import NifDataModule

    cfg = DataConfig(cutoff_len=96, micro_batch_size=2, **_EXACT["data"])
    dm = NifDataModule(data, tiny, cfg)
    dm.setup()
    per_rank = [
        -(-len(dm.epoch_batches(dm.train_examples, seed=e, shuffle=True)) // ranks) for e in (0, 1)
    ]
    assert accumulation == 1 or all(n % accumulation for n in per_rank), per_rank  # odd counts
    return [-(-n // accumulation) for n in per_rank]


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_deepspeed_gradients_and_steps_equal_those_without_it(
    stage, accumulation, exact, without_deepspeed, workdir
):
    plain, plain_ends = without_deepspeed(accumulation)
    out, ends = exact(f"exact-z{stage}-acc{accumulation}", accumulation, stage=stage)
    # The gradient norm before clipping, at every step: Lightning's in its own loop, DeepSpeed's
    # own over the ZeRO partitions of 2 ranks.
    norms, reference = _grad_norms(out), _grad_norms(plain)
    steps = sum(_steps_per_epoch(exact.data, workdir / "tiny", 2, accumulation))
    assert sorted(reference) == sorted(norms) == list(range(steps))
    for step, norm in reference.items():
        assert norm > 0.05  # clipping is at work
        assert norms[step] == pytest.approx(norm, rel=1e-5), step
    # The clipped updates, summed over every step: the adapters.
    got, want = _adapter(out), _adapter(plain)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5 * value.abs().max().item())
    # One step count everywhere: Lightning's, DeepSpeed's (N micro-steps each), the scheduler's
    # and its planned total (the cosine ends at the last step), on every rank.
    assert [e["rank"] for e in ends] == [0, 1] and len(plain_ends) == 1
    for e in [*ends, *plain_ends]:
        assert e["global_step"] == e["scheduler_steps"] == e["estimated_steps"] == steps, e
    for e in ends:
        assert e["ds_global_steps"] == steps and e["ds_micro_steps"] == steps * accumulation, e
    # The checkpoint holds both counters at a step boundary (validation at half an epoch fell
    # inside an accumulation and wrote no last.ckpt then).
    # ZeRO-2: mp_rank_00_model_states.pt; ZeRO-3: zero_pp_rank_<R>_mp_rank_00_model_states.pt.
    (path, *_) = sorted((out / "checkpoints" / "last.ckpt").rglob("*model_states.pt"))
    states = torch.load(path, map_location="cpu", weights_only=False)
    assert states["global_steps"] == states["global_step"] == steps
    saves = [
        e for e in _records(workdir / f"exact-z{stage}-acc{accumulation}.jsonl") if "saved" in e
    ]
    assert saves and all(e["ds_micro_steps"] == e["saved"] * accumulation for e in saves), saves


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_resume_inside_the_second_epoch_with_accumulation_lands_where_a_straight_run_does(
    exact,
):
    """Every rank dies as step 7 starts, inside epoch 2 (4 steps of 2 micro-batches an epoch,
    one batch of them a fill); the resumed run continues from last.ckpt (step 6, 4 batches into
    the epoch), DeepSpeed's micro-step count restarts at 0 and still meets Lightning's step
    boundaries: the same adapter and the same counts as a straight run."""
    straight, straight_ends = exact("exact-z2-acc2", 2)
    name = "resume-z2-acc2"
    crash = {"NIF_TEST_CRASH_AT_STEP": "6"}
    proc = exact(name, 2, env=crash, checkpoint_every_n_steps=1)
    assert proc.returncode == 17, proc.stderr[-3000:]
    out, ends = exact(name, 2, resume=True, checkpoint_every_n_steps=1)
    assert [(e["global_step"], e["scheduler_steps"], e["ds_global_steps"]) for e in ends] == [
        (e["global_step"], e["scheduler_steps"], e["ds_global_steps"]) for e in straight_ends
    ]
    got, want = _adapter(out), _adapter(straight)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


# ---- several nodes, as the README starts them ---------------------------------------------------


def _readme_torchrun_lines() -> list[list[str]]:
    """The README's two torchrun lines (node 0, node 1), split into arguments."""
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("With torchrun, on node 0 and node 1", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_nodes(
    configs: list[Path], program: list[str], env: dict, extra: tuple[str, ...] = ()
) -> list[subprocess.CompletedProcess]:
    """The README's torchrun line per node on this machine: 1 process per node, node 0 at
    127.0.0.1 on a free port, `$(which nif)` replaced by `program`, node i reading configs[i],
    `extra` arguments at the end."""
    port = str(_free_port())
    procs = []
    for line, config in zip(_readme_torchrun_lines(), configs, strict=True):
        assert line[0] == "torchrun" and "--node-rank" in line  # both nodes rank 0 without it
        values = {"8": "1", "HOST": "127.0.0.1", "29500": port, "CFG": str(config)}
        args = [values.get(a, a) for a in line[1:]]
        at = args.index("$(which")
        assert args[at + 1] == "nif)"
        args[at : at + 2] = program
        args += extra
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", *args],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def test_two_nodes_started_as_the_readme_says_equal_one_node_of_two_ranks(zero2_fp16, workdir):
    record = workdir / "nodes.jsonl"
    config = _config(workdir, "two-nodes", stage=2, precision="16-mixed")
    nodes = _torchrun_nodes([config, config], [str(DRIVER)], {"NIF_TEST_RECORD": str(record)})
    for node in nodes:
        assert node.returncode == 0, node.stderr[-4000:]
    events = _records(record)
    ends = sorted((e for e in events if "global_step" in e), key=lambda e: e["rank"])
    assert [(e["rank"], e["global_step"]) for e in ends] == [(0, STEPS), (1, STEPS)]
    swapped = {(e["rank"], e["swapped"]) for e in events if "swapped" in e}
    assert {(0, "adapter"), (0, "merged")} <= swapped
    assert {rank for rank, _ in swapped} == {0}  # only global rank 0 writes adapter/ and merged/
    # The same ranks, data and arithmetic as `devices: 2` on one node: the same adapter, exactly.
    got, want = _adapter(workdir / "two-nodes"), _adapter(zero2_fp16)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("resume", [False, True])
def test_nodes_that_do_not_share_out_stop_at_start_in_one_line(workdir, resume):
    """Node 1 writes into a folder of its own (as on a node-local disk): every rank stops before
    training, with one line, and no checkpoint is written. With `--resume`, node 1 finds no
    checkpoint where node 0 does: the same line, not node 1 alone stopping while node 0 waits."""
    names = [f"node{rank}-out{'-resume' if resume else ''}" for rank in (0, 1)]
    configs = [_config(workdir, name, stage=2, precision="32-true") for name in names]
    if resume:  # what node 0 would resume from (never read: the check stops the run before)
        (workdir / names[0] / "checkpoints" / "last.ckpt").mkdir(parents=True)
    before = [sorted((workdir / name / "checkpoints").rglob("*")) for name in names]
    extra = ("--resume",) if resume else ()
    nodes = _torchrun_nodes(configs, [shutil.which("nif") or "nif"], {}, extra)
    for rank, node in enumerate(nodes):
        assert node.returncode != 0
        lines = [
            line for line in node.stderr.splitlines() if "is not one folder for all ranks" in line
        ]
        assert len(lines) == 1, node.stderr[-4000:]
        assert lines[0].startswith("nif train: ") and f"(rank {rank}, " in lines[0]
        assert "filesystem all nodes share" in lines[0]
        rank_output, _, torchrun_report = node.stderr.partition("(exitcode: ")
        assert torchrun_report.startswith("2)")  # the rank's exit code: bad input
        assert "Traceback" not in rank_output
    for name, files in zip(names, before, strict=True):  # nothing written, no probe left
        assert sorted((workdir / name / "checkpoints").rglob("*")) == files, name
