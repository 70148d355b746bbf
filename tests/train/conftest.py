import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: extra intra-op threads only add synchronization, and on a loaded 2-core
    # machine (other jobs running) they made these tests ~20x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
