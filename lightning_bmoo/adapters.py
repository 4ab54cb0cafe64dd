"""Per-language LoRA adapters with peft: each microbatch's language selects its adapter.

:func:`add_language_adapters` puts one LoRA adapter per language, named by the language, on a
frozen base model; :func:`activate_language` routes the next forward passes through one of
them. Every adapter stays trainable the whole time, so the set of parameters that require a
gradient never changes: DDP (built with ``find_unused_parameters=True``) registers all of them
once, the adapters a step's languages do not use get no gradient (``.grad`` stays ``None``),
and the bucket-MOO hook gives each used adapter its own language's update, whatever slot it was
used in. The frozen base has no gradient and takes no part in the hook.

peft's own ``PeftModel.set_adapter`` also switches ``requires_grad`` (only the active adapter
trainable); :func:`activate_language` undoes that at once, before anything sees it.

Needs ``peft`` (``pip install "lightning-bmoo[hf]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

try:
    from peft import LoraConfig, PeftModel, get_peft_model
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'lightning_bmoo.adapters needs peft: pip install "lightning-bmoo[hf]".'
    ) from err

from .vocabulary import check_language_name

__all__ = [
    "activate_language",
    "add_language_adapters",
    "check_adapter_name",
    "language_adapters",
    "load_language_adapters",
]


def add_language_adapters(
    model: nn.Module, languages: Sequence[str], config: LoraConfig
) -> PeftModel:
    """One LoRA adapter per language on ``model``, all trainable; the base is frozen.

    Each adapter is named by its language (``model.peft_config`` has one entry per language).
    The first language's adapter is active until :func:`activate_language` picks another.

    Args:
        model: a base model, e.g. a ``transformers`` causal LM.
        languages: the languages, each a valid language name
            (:func:`~lightning_bmoo.vocabulary.check_language_name`) without ``.``.
        config: the LoRA configuration every adapter gets.

    Raises:
        TypeError: if ``model`` already is a ``PeftModel``.
        ValueError: for an empty or duplicated list, or a name peft cannot use.
    """
    if isinstance(model, PeftModel):
        raise TypeError(
            "add_language_adapters needs the base model, not a PeftModel: pass "
            "peft_model.get_base_model() or build the adapters on a fresh base."
        )
    names = [check_adapter_name(lang) for lang in languages]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"languages must be a non-empty list without duplicates, got {languages}.")
    peft_model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    peft_model.set_adapter(names[0])
    peft_model.set_requires_grad(names, requires_grad=True)
    return peft_model


def activate_language(model: PeftModel, language: str) -> None:
    """Routes the next forward passes through ``language``'s adapter; all stay trainable.

    Call it before the microbatch's forward pass, and keep it until its backward pass has run
    (with gradient checkpointing the backward pass runs the forward again).

    Raises:
        KeyError: if ``model`` has no adapter named ``language``, naming the ones it has.
    """
    adapters = language_adapters(model)
    if language not in adapters:
        raise KeyError(
            f"The model has no adapter for language {language!r}; it has {adapters}. Build it "
            "with add_language_adapters(model, languages, config) over every training language."
        )
    if model.active_adapter != language:
        model.set_adapter(language)
        model.set_requires_grad(adapters, requires_grad=True)


def language_adapters(model: PeftModel) -> list[str]:
    """The names of ``model``'s adapters (its languages, for :func:`add_language_adapters`)."""
    return list(model.peft_config)


def load_language_adapters(
    model: nn.Module,
    directory: str | Path,
    languages: Sequence[str] | None = None,
    *,
    is_trainable: bool = False,
) -> PeftModel:
    """Loads adapters saved by ``save_pretrained`` of :func:`add_language_adapters`' model.

    ``PeftModel.save_pretrained(directory)`` writes each language's adapter to
    ``directory/<language>/``; this puts them back on a fresh base model.

    Args:
        model: the base model the adapters were trained on.
        directory: the folder ``save_pretrained`` wrote.
        languages: which adapters to load (default: every sub-folder with an
            ``adapter_config.json``, sorted).
        is_trainable: load them trainable (to continue training) instead of for inference.

    Raises:
        FileNotFoundError: if ``directory`` holds no adapter of a requested language.
    """
    directory = Path(directory)
    if languages is None:
        languages = sorted(p.parent.name for p in directory.glob("*/adapter_config.json"))
    missing = [
        lang for lang in languages if not (directory / lang / "adapter_config.json").is_file()
    ]
    if missing or not languages:
        raise FileNotFoundError(
            f"No saved adapter for {missing or 'any language'} in {directory} (expected "
            "<language>/adapter_config.json, as save_pretrained writes them)."
        )
    first, *rest = languages
    peft_model = PeftModel.from_pretrained(
        model, directory / first, adapter_name=first, is_trainable=is_trainable
    )
    for lang in rest:
        peft_model.load_adapter(directory / lang, adapter_name=lang, is_trainable=is_trainable)
    if is_trainable:
        peft_model.set_requires_grad(list(languages), requires_grad=True)
    return peft_model


def check_adapter_name(language: str) -> str:
    """Returns ``language`` if it can name a peft adapter, else raises.

    A valid language name (:func:`~lightning_bmoo.vocabulary.check_language_name`) without ``.``.

    Raises:
        ValueError: naming the problem.
    """
    check_language_name(language)
    if "." in language:
        # peft keeps adapters in ModuleDicts, whose keys cannot hold a dot.
        raise ValueError(
            f"Language {language!r} cannot name a peft adapter (no '.' allowed); rename it, "
            "e.g. with '_' or '-'."
        )
    return language
