"""The README's promises that can be executed: its Python example runs, and its two commands
are the ones `.ci/run` and a new user would type."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from your own Lightning code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    from data_gen.generate import GenConfig, generate
    from nif_lightning.tiny_model import save_tiny_model

    # What `nif run` leaves behind, in miniature.
    run = tmp_path / "runs" / "quickstart"
    generate(GenConfig(corpus="builtin", out=str(run / "data"), num_docs=30), progress=False)
    save_tiny_model(run / "base-model")
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_example(), "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "my-adapter" / "adapter_model.safetensors").is_file()


def _readme_command(after: str) -> list[str]:
    """The steps of the first bash block after the line starting with `after`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text.split(after, 1)[1], re.S).group(1)
    return [step.strip() for step in block.strip().split(" && ")]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    steps = [line for line in ci[ci.index('cd "$(dirname "$0")/.."') + 1 :] if line.strip()]
    assert steps == _readme_command("Set up and run the tests")


def test_readme_commands_install_cpu_torch_first():
    for after in ("Run the whole method on embedded defaults", "Set up and run the tests"):
        steps = _readme_command(after)
        assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"]
        torch_step = steps.index("pip install torch==2.13.0")
        assert all("pip install -e" not in s for s in steps[:torch_step])
    assert _readme_command("Run the whole method")[-1] == "nif run"


def test_the_sbatch_template_is_the_readmes_and_its_nif_train_line_parses(tmp_path):
    """2 nodes x 8 V100s: one task per GPU (Lightning reads SLURM's ranks), SIGTERM 90 s before
    the limit (`nif train` saves at a step boundary, exits 143), a requeue on 143, and a `srun
    nif train` line that nif's own parser reads as 2 nodes x 8 GPUs x accumulation 2."""
    from data_gen.schema import dotted_given
    from nif_lightning.cli import build_parser
    from nif_lightning.config import TrainConfig, load_config

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("Under SLURM, [`configs/slurm/2x8-v100.sbatch`]", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    template = ROOT / "configs" / "slurm" / "2x8-v100.sbatch"
    assert template.read_text(encoding="utf-8") == block
    directives = dict(
        line.removeprefix("#SBATCH --").split("=", 1)
        for line in block.splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    )
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == "8"
    assert directives["gpus-per-node"] == "8" and directives["signal"] == "SIGTERM@90"
    assert "#SBATCH --requeue" in block
    assert 'if [ "$status" -eq 143 ]; then scontrol requeue "$SLURM_JOB_ID"; fi' in block
    (launch,) = [line for line in block.splitlines() if line.startswith("srun ")]
    argv = shlex.split(launch.replace('"$CONFIG"', str(ROOT / "configs/paper/llama3-8b.yaml")))
    assert argv[:2] == ["srun", "nif"]
    args = build_parser().parse_args(argv[2:])
    cfg = load_config(args.config, dotted_given(args, TrainConfig))
    t = cfg.trainer
    assert (t.num_nodes, t.devices, t.accumulate_grad_batches) == (2, 8, 2)
    assert t.num_nodes * t.devices * t.accumulate_grad_batches * cfg.data.micro_batch_size == 256
    subprocess.run(["bash", "-n", str(template)], check=True)
