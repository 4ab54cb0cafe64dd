"""lightning_bmoo.adapters in one process: naming, activation, gradients, saving and loading."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from lightning_bmoo.adapters import (
    activate_language,
    add_language_adapters,
    language_adapters,
    load_language_adapters,
)

from .tiny import LANGUAGES, lm_loss, lora_config, per_language_model, tiny_llama, tokens


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_one_trainable_adapter_per_language_on_a_frozen_base():
    model = per_language_model()
    assert language_adapters(model) == list(LANGUAGES)
    names = trainable(model)
    assert names and all("lora_" in n for n in names)
    for lang in LANGUAGES:  # every language has its own A and B in every adapted projection
        own = {n for n in names if f".{lang}." in n}
        assert len(own) == len(names) // len(LANGUAGES)


def test_activation_routes_the_forward_pass_and_keeps_every_adapter_trainable():
    model = per_language_model()
    before = trainable(model)
    ids = tokens("de", 0, 0)
    logits = {}
    for lang in LANGUAGES:
        activate_language(model, lang)
        assert model.active_adapter == lang and trainable(model) == before
        logits[lang] = model(input_ids=ids).logits
    assert all(not torch.allclose(logits["de"], logits[lang]) for lang in LANGUAGES[1:])
    # peft's own set_adapter would freeze the other adapters: the set DDP registered would change.
    model.set_adapter("en")
    assert trainable(model) < before


def test_only_the_active_adapter_gets_a_gradient():
    model = per_language_model()
    model.zero_grad(set_to_none=True)
    lm_loss(model, "fr", 0, 0).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert (p.grad is not None) == (".fr." in name), name
        else:
            assert p.grad is None, name  # the frozen base


@pytest.mark.parametrize(
    ("languages", "error", "match"),
    [
        ([], ValueError, "non-empty list without duplicates"),
        (["en", "en"], ValueError, "non-empty list without duplicates"),
        (["en.US"], ValueError, r"cannot name a peft adapter \(no '\.' allowed\)"),
        (["a|b"], ValueError, "Invalid language name"),
    ],
)
def test_bad_languages_fail_before_any_adapter_is_made(languages, error, match):
    base = tiny_llama()
    with pytest.raises(error, match=match):
        add_language_adapters(base, languages, lora_config())
    assert not any("lora_" in n for n, _ in base.named_parameters())


def test_a_peft_model_or_an_unknown_language_is_refused():
    with pytest.raises(TypeError, match="needs the base model"):
        add_language_adapters(get_peft_model(tiny_llama(), lora_config()), ["en"], lora_config())
    with pytest.raises(KeyError, match=r"no adapter for language 'sw'; it has \['de', 'en'"):
        activate_language(per_language_model(), "sw")


def test_saved_adapters_load_back_for_every_language(tmp_path):
    model = per_language_model()
    model.save_pretrained(tmp_path / "adapters")
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir() if p.is_dir()) == sorted(
        LANGUAGES
    )
    loaded = load_language_adapters(tiny_llama(), tmp_path / "adapters")
    assert language_adapters(loaded) == sorted(LANGUAGES) and not trainable(loaded)
    for lang in LANGUAGES:
        activate_language(model, lang)
        activate_language(loaded, lang)
        ids = tokens(lang, 0, 0)
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    again = load_language_adapters(tiny_llama(), tmp_path / "adapters", ["ru"], is_trainable=True)
    assert language_adapters(again) == ["ru"] and trainable(again)
    with pytest.raises(FileNotFoundError, match=r"No saved adapter for \['sw'\]"):
        load_language_adapters(tiny_llama(), tmp_path / "adapters", ["de", "sw"])
    with pytest.raises(FileNotFoundError, match="No saved adapter for any language"):
        load_language_adapters(tiny_llama(), tmp_path)


def test_plain_torch_users_do_not_load_lightning():
    from ..test_package import _modules_after

    assert not {"lightning", "torchmetrics"} & _modules_after("import lightning_bmoo.adapters")
