"""Construction, registry names, CLI configuration and the language of a batch."""

from __future__ import annotations

import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import StrategyRegistry

import lightning_bmoo.strategy  # noqa: F401  (registers the names)
from lightning_bmoo.strategy import BucketMOOStrategy, batch_language

from .models import LanguageData, TinyModel


@pytest.mark.parametrize(
    ("name", "start_method", "find_unused"),
    [
        ("bmoo", "popen", None),
        ("bmoo_spawn", "spawn", None),
        ("bmoo_fork", "fork", None),
        ("bmoo_notebook", "fork", None),
        ("bmoo_find_unused_parameters_true", "popen", True),
        ("bmoo_fork_find_unused_parameters_false", "fork", False),
    ],
)
def test_trainer_builds_the_strategy_by_name(name, start_method, find_unused):
    assert name in StrategyRegistry.available_strategies()
    trainer = Trainer(strategy=name, accelerator="cpu", devices=2, logger=False)
    strategy = trainer.strategy
    assert type(strategy) is BucketMOOStrategy
    assert strategy._start_method == start_method
    assert strategy._ddp_kwargs.get("find_unused_parameters") == find_unused
    assert strategy.hook_state is None  # registered when fitting starts


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"aggregator": "adam"}, ValueError, "Unknown aggregator 'adam'. Valid names: "),
        ({"aggregator_options": {"nope": 1}}, ValueError, "does not accept option"),
        ({"transport": "ring"}, ValueError, "Unknown transport 'ring'"),
        ({"granularity": "layer"}, ValueError, "Unknown granularity 'layer'"),
        ({"nonfinite": "ignore"}, ValueError, "Unknown nonfinite policy 'ignore'"),
        ({"slots_per_rank": 0}, ValueError, "slots_per_rank must be an int >= 1"),
        ({"language_fn": "language"}, TypeError, "language_fn must be callable"),
        ({"ddp_comm_hook": lambda state, bucket: None}, TypeError, "its own communication hook"),
    ],
)
def test_bad_options_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        BucketMOOStrategy(**kwargs)


def test_options_reach_ddp_and_the_hook_arguments():
    strategy = BucketMOOStrategy(
        "cagrad",
        aggregator_options={"c": 0.2},
        transport="gather",
        granularity="parameter",
        bucket_cap_mb=5,
        static_graph=True,
    )
    assert strategy._ddp_kwargs == {"bucket_cap_mb": 5, "static_graph": True}
    options = strategy.options
    assert (options.transport, options.granularity) == ("gather", "parameter")
    assert options.aggregator.name == "cagrad" and options.aggregator.c == 0.2
    assert (options.slots_per_rank, options.nonfinite) == (None, None)  # decided at fit


@pytest.mark.parametrize(
    ("batch", "language"),
    [
        ({"language": "sw"}, "sw"),
        ({"language": ["sw", "sw"]}, "sw"),
        ({"language": ("de",), "x": torch.zeros(1)}, "de"),
    ],
)
def test_batch_language_reads_a_string_or_identical_strings(batch, language):
    assert batch_language(batch) == language


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"language": ["de", "en", "de"]}, r"mixes languages \['de', 'en'\].*LanguageBatchSampler"),
        ({"x": torch.zeros(2)}, r"batch\['language'\], which is missing.*language_fn"),
        ((torch.zeros(2), torch.zeros(2)), "tuple batch.*language_fn"),
        ({"language": 3}, "expected a language name"),
        ({"language": []}, "expected a language name"),
        ({"language": ""}, "empty string"),
    ],
)
def test_batch_language_errors_name_the_fix(batch, match):
    with pytest.raises(ValueError, match=match):
        batch_language(batch)


def _second(batch):
    return batch[1]


def test_language_fn_and_language_key_override_the_default():
    assert BucketMOOStrategy(language_fn=_second).language_of((None, "fa")) == "fa"
    assert BucketMOOStrategy(language_key="lang").language_of({"lang": ["ar"]}) == "ar"
    with pytest.raises(ValueError, match="language_fn returned None"):
        BucketMOOStrategy(language_fn=lambda batch: None).language_of({})


def test_lightning_cli_builds_the_strategy_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not the CLI's
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  accelerator: cpu\n"
        "  devices: 2\n"
        "  logger: false\n"
        "  strategy:\n"
        "    class_path: lightning_bmoo.strategy.BucketMOOStrategy\n"
        "    init_args:\n"
        "      aggregator: pcgrad\n"
        "      transport: gather\n"
        "      granularity: parameter\n"
        "      seed: 3\n"
        "      bucket_cap_mb: 5\n"
    )
    cli = LightningCLI(
        TinyModel,
        LanguageData,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
    )
    strategy = cli.trainer.strategy
    assert isinstance(strategy, BucketMOOStrategy)
    options = strategy.options
    assert (options.aggregator.name, options.transport, options.seed) == ("pcgrad", "gather", 3)
    # jsonargparse also passes DDP's other arguments, with their defaults.
    assert strategy._ddp_kwargs["bucket_cap_mb"] == 5
