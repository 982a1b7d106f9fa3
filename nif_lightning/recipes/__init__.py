"""Recipes: the end-to-end runs that wire the library's pieces together (torchtune's split).

- `train.py`    `nif train`: plan memory, data module, LoRA module, strategy, callbacks; fit,
                export the adapter, merge.
- `run.py`      `nif run`: gen -> filter -> train -> preview from one config, resumable, with
                the report.
- `evaluate.py` `nif eval MODEL_DIR`: the paper's suites on one model, cached and resumable.

Everything a recipe calls is library: `nif_lightning.{config, data, packing, module, loss,
strategy, loading, memory, merge, preview, report}`, `nif_lightning.evaluation`, the kernels
(`nif_kernels`), and `data_gen` (corpus, sampling, the LLM clients, the run folder).
A recipe holds no reusable logic of its own: what two recipes need lives in the library.
"""
