import importlib.util
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


# Why DeepSpeed's CPU comm op could not be built before the first test (None: it was, or no
# test needs it).
_DEEPSPEED_OP: dict[str, str | None] = {"error": None}


def pytest_collection_finish(session):
    """Build DeepSpeed's CPU comm op before the first test when a selected test runs DeepSpeed on
    CPU ranks (fixture `deepspeed_on_cpu`): its JIT build takes 1-8 min, past one test's timeout,
    and a build killed by that timeout would leave a lock every later run waits on."""
    wanted = any("deepspeed_on_cpu" in getattr(item, "fixturenames", ()) for item in session.items)
    if not wanted or session.config.option.collectonly or torch.cuda.is_available():
        return
    if importlib.util.find_spec("deepspeed") is None:
        return
    from nif_lightning.deepspeed_cpu import BUILD_LIMIT_S, build

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    say(
        "DeepSpeed's CPU comm op: building it once for the DeepSpeed tests "
        f"(1-8 min the first time, limit {BUILD_LIMIT_S / 60:.0f} min)"
    )
    try:
        seconds = build(log=say)
    except Exception as err:  # reported by every test that needs it, the others still run
        _DEEPSPEED_OP["error"] = f"{type(err).__name__}: {err}"
        say(f"DeepSpeed's CPU comm op: {_DEEPSPEED_OP['error']}")
    else:
        say(f"DeepSpeed's CPU comm op: ready ({seconds:.0f} s)")


@pytest.fixture(scope="session")
def deepspeed_on_cpu():
    """For tests that run DeepSpeed on CPU ranks: its comm op is built (before the first test,
    see `pytest_collection_finish`); the build's error fails them instead of a hang."""
    pytest.importorskip("deepspeed")
    if _DEEPSPEED_OP["error"]:
        pytest.fail(f"DeepSpeed's CPU comm op could not be built: {_DEEPSPEED_OP['error']}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
