"""nif-lightning: instruction following from non-instructional data (Xie, Syu, Lee)."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

setup(
    name="nif-lightning",
    version="0.1.0",
    description=(
        "Non-instructional fine-tuning: teacher-continued web text, LoRA with fused Triton "
        "kernels, PyTorch Lightning + DeepSpeed training"
    ),
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace packages, so the data folders (configs, model_shapes, evaluation/data) are packages
    # too: otherwise setuptools warns on every install about data outside declared packages.
    # The kernels live in `kernels/nif_kernels/`: the folder `kernels/` itself must not be a
    # package, since the import name `kernels` is Hugging Face's (transformers imports it) and the
    # checkout root is on sys.path under `python -m pytest`.
    packages=[
        *find_namespace_packages(
            include=["nif_lightning*", "data_gen*"], exclude=["*.__pycache__"]
        ),
        "nif_kernels",
    ],
    package_dir={"nif_kernels": "kernels/nif_kernels"},
    include_package_data=True,
    package_data={
        # lm-eval-demo: stand-in leaderboard tasks (YAML, loader, documents), `--include-path demo`
        "nif_lightning.evaluation": ["data/*.jsonl", "data/lm-eval-demo/*"],
        "nif_lightning": ["model_shapes/*.json", "configs/*.yaml"],
    },
    # GPU users install their own CUDA build of torch first; `pip install torch==2.13.0`
    # gives the CPU build used by CI.
    install_requires=[
        "torch>=2.4",
        "lightning>=2.4",
        "transformers>=4.45",
        "peft>=0.13",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "torchmetrics>=1.4",
        # >= 3.7: `nif kernels check` (nif_kernels/aot.py) specialises launches with Triton's
        # private binder (create_function_from_signature, JITFunction._pack_args), tested on
        # 3.7.1 and 3.9.0 (the newest); no upper bound, since no release is known to break it
        # (aot.py names what it misses). 3.7 must stay in: PyPI's (CUDA) torch 2.13.0 pins
        # triton==3.7.1, and a narrower range cannot be resolved with it in one install.
        "triton>=3.7; platform_system == 'Linux'",
        "aiohttp>=3.9",
        "datasets>=2.20",
        "pyarrow>=15",
        "pyyaml>=6",
        "tqdm>=4.66",
        # The built-in IFEval's case checks ask langdetect, as IFEval does: `nif eval MODEL` runs
        # it offline on a base install (pure Python, ~1 MB).
        "langdetect>=1.0.9",
        "matplotlib>=3.7",  # the loss plot of the run report
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # exact: a newer ruff brings new rules and formatting, so `ruff check .` (CI) would fail
            # on unchanged code
            "ruff==0.17.6",
            # the LightningCLI and logger tests (tests/train/test_lightning_cli.py, test_loggers.py)
            "jsonargparse[signatures]>=4.27.7",
            "tensorboard>=2.9",
            # Hugging Face's `kernels` (transformers 5.x requires it too): the import-name tests
            # check that the checkout root never shadows it.
            "kernels",
        ],
        # `LightningCLI(NifLoraModule, NifDataModule)`: Lightning's CLI needs jsonargparse.
        "cli": ["jsonargparse[signatures]>=4.27.7"],
        "flash": ["flash-attn>=2.5"],
        # DeepSpeed builds against the installed torch: install it with
        # `DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed` (see README).
        # 0.19.8: the version the 2-rank tests run; ZeRO-3 with non-reentrant activation
        # checkpointing over frozen weights (the 70B recipe) is known to fail in older ones.
        "deepspeed": ["deepspeed>=0.19.8"],
        "eval": ["lm-eval[ifeval]>=0.4.13"],  # oll and ifeval suites; langdetect for IFEval
    },
    entry_points={"console_scripts": ["nif = nif_lightning.cli:main"]},
)
