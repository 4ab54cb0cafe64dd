"""Tiny random Hugging Face causal LMs and LoRA setups, their data, and a one-process reference.

Nothing is downloaded: the models are built from configs (a few ten thousand parameters).
The reference (what ``.grad`` must hold after a step of the hook) is
:func:`tests.reference.expected_grads`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
from peft import LoraConfig
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lightning_bmoo.adapters import activate_language, add_language_adapters

from .. import reference

LANGUAGES = ("de", "en", "fr", "ru")
VOCAB = 64
SEQ = 8


def tiny_llama(*, tied: bool = True, layers: int = 1, seed: int = 0) -> LlamaForCausalLM:
    """A Llama with hidden size 32 (about 10k parameters a layer), tied embeddings by default."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    """A 2-layer Qwen2 (biases on q, k, v) of the same size, untied."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config)


def lora_config(**overrides) -> LoraConfig:
    """LoRA on every attention and MLP projection, no dropout, both factors random.

    peft's default initialisation (B = 0) makes the gradient of A exactly zero at the first
    step; random B gives every adapter parameter a real gradient to check.
    """
    settings = {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
        "init_lora_weights": False,
        "task_type": "CAUSAL_LM",
    }
    settings.update(overrides)
    return LoraConfig(**settings)


def per_language_model(base: Callable[[], nn.Module] = tiny_llama, **lora) -> nn.Module:
    """A tiny base with one LoRA adapter per language of :data:`LANGUAGES`, seeded."""
    torch.manual_seed(1)
    return add_language_adapters(base(), LANGUAGES, lora_config(**lora))


def tokens(language: str, step: int, slot: int) -> torch.Tensor:
    """Deterministic token ids ``[2, SEQ]``: the language's own token band, so gradients differ."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{language}/{step}/{slot}".encode()))
    low = 4 + 12 * LANGUAGES.index(language) if language in LANGUAGES else 4
    return torch.randint(low, low + 12, (2, SEQ), generator=g)


def lm_loss(model: nn.Module, language: str, step: int, slot: int) -> torch.Tensor:
    """The model's causal LM loss on the slot's tokens, through its language's adapter if any.

    ``model`` may be DDP-wrapped: the adapter is chosen on the module, the forward runs through
    DDP.
    """
    inner = getattr(model, "module", model)
    if hasattr(inner, "peft_config") and language in inner.peft_config:
        activate_language(inner, language)
    ids = tokens(language, step, slot)
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def trainable_grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """``.grad`` of every trainable parameter by name (``None``: no gradient)."""
    return {
        n: None if p.grad is None else p.grad.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def expected_grads(
    make_model: Callable[[], nn.Module],
    layout: Sequence[str],
    step: int,
    K: int,
    groups: list[tuple[str, list[str]]],
    aggregator: str,
    loss: Callable[[nn.Module, str, int, int], torch.Tensor] = lm_loss,
) -> dict[str, torch.Tensor | None]:
    """:func:`tests.reference.expected_grads`, with :func:`lm_loss` by default."""
    return reference.expected_grads(make_model, layout, step, K, groups, aggregator, loss)
