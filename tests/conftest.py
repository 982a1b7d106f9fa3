import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter (numpy on the CPU). The
# variable is read when a `@triton.jit` function is defined, so it must be set before any test
# module imports `nif_kernels`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny random Llama + tokenizer (`nif tiny-model`), written once; tests only read it."""
    from nif_lightning.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def write_builtin_shard():
    """`write(folder, rows, prompt_chars, completion_chars)`: a dataset folder whose one shard
    (the Arrow IPC *file* format, what other tools write; `nif gen` writes the stream format)
    holds `rows` built-in texts, each cut into a prompt and a completion by characters."""
    import pyarrow as pa

    from data_gen.builtin import builtin_texts

    def write(folder, rows: int, prompt_chars: int, completion_chars: int):
        texts = builtin_texts()[:rows]
        end = prompt_chars + completion_chars
        table = pa.table(
            {
                "id": [f"t{i}" for i in range(len(texts))],
                "prompt": [t[:prompt_chars] for t in texts],
                "completion": [t[prompt_chars:end] for t in texts],
            }
        )
        (folder / "shards").mkdir(parents=True)
        with pa.ipc.new_file(str(folder / "shards" / "00000.arrow"), table.schema) as w:
            w.write_table(table)
        return folder

    return write


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
