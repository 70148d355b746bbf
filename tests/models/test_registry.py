"""The architecture registry finds blocks and Linear layers of every supported family."""
import pytest

import tiny
from lowbit.errors import LowbitError
from lowbit.models.registry import block_linears, get_arch, get_blocks


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_registry_finds_every_block_and_its_linears(arch):
    model, _ = tiny.build(arch)
    blocks = get_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    names = set(block_linears(blocks[0]))
    assert set(get_arch(model).linears) == names


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(LowbitError, match="architecture 'gpt2' is not supported; supported: .*llama"):
        get_blocks(model)
