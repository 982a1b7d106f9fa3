"""nif_lightning: Lightning training for non-instructional fine-tuning.

The public API is re-exported lazily (PEP 562), so `import nif_lightning` (and `nif --help`)
does not pay for importing torch, Lightning and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "NifLoraModule": "nif_lightning.module",
    "LoraConfig": "nif_lightning.config",
    "OptimConfig": "nif_lightning.config",
    "NifDataModule": "nif_lightning.data",
    "DataConfig": "nif_lightning.config",
    "AdapterExport": "nif_lightning.callbacks",
    "AdapterMerge": "nif_lightning.callbacks",
    "LossScaleGuard": "nif_lightning.callbacks",
    "GradNorm": "nif_lightning.callbacks",
    "Throughput": "nif_lightning.callbacks",
    "TrainConfig": "nif_lightning.config",
    "load_config": "nif_lightning.config",
    "StrategyConfig": "nif_lightning.config",
    "RunConfig": "nif_lightning.config",
    "ConfigError": "data_gen.schema",
    "build_strategy": "nif_lightning.strategy",
    "NifDeepSpeedStrategy": "nif_lightning.strategy",
    "merge_adapter": "nif_lightning.merge",
    "save_tiny_model": "nif_lightning.tiny_model",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nif_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
