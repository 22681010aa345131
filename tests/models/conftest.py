"""Model tests run tiny tensors: one intra-op thread avoids oversubscribing the 2 CI cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
