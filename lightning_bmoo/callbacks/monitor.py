"""InterferenceMonitor: logs gradient interference between languages from the hook's statistics."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from .. import vocabulary as vocab
from ..comm.stats import StepStats
from ..strategy import BucketMOOTraining, find_language_sampler
from . import wandb_panels
from .figures import GroupConflict, Interference, interference, step_dots, step_scalars
from .language_means import SyncedMeans, scalar_loss
from .lookahead import LossFn, exact_affinity


class InterferenceMonitor(pl.Callback):
    """Logs how the languages' gradients interfere, from the statistics the bucket-MOO hook
    records at every step: no extra backward pass, no gradient copy.

    Every ``log_every_n_steps`` optimizer steps it logs, under ``prefix`` (see docs/monitor.md;
    names and meanings in :mod:`lightning_bmoo.vocabulary`): ``loss/<lang>`` (training loss
    per language, averaged over the interval and the ranks), ``cos/<a>|<b>``, ``cos_min``,
    ``cos_mean``, ``conflict_rate``, ``conflict_rate_weighted``, ``grad_norm/<lang>``,
    ``weight/<lang>``, ``weight_std/<lang>``, ``update_ratio``, ``gain/<lang>``,
    ``gain_mean/<lang>``, ``affinity/<i>|<j>``, ``comm/bytes_sent``, ``comm/hook_ms``,
    ``comm/peak_extra_mb`` (and ``affinity_exact/<i>|<j>`` with ``lookahead_every``).
    Gradient figures are averaged over the interval's steps that define them. It works with any
    Lightning logger; with a :class:`~lightning.pytorch.loggers.WandbLogger` rank 0 also logs
    heatmaps, the most conflicting groups as tables, and declares the metrics with
    ``wandb.define_metric``. ``val_loss/<lang>`` and ``val_ppl/<lang>`` are logged at the end
    of validation when ``validation_step`` returns the loss and batches carry a language.

    With ``BucketMOOStrategy("mean")`` the update averages the step's languages with equal
    weights (DDP's average when every language fills as many slots), so the monitor measures
    the interference of an ordinary run: measure first, then switch MOO on.

    Args:
        log_every_n_steps: logging interval in optimizer steps (default: the trainer's).
        lookahead_every: every that many steps, also measure TAG's exact lookahead affinity
            with extra forward passes on the step's batches (one extra backward per language).
            ``None`` (default) turns it off.
        languages: the languages to expect; a batch of another language is an error. By default
            whatever the batches carry (checked against the ``LanguageBatchSampler``, if any).
        prefix: prefix of every metric name.
        top_k: rows of the most-conflicting-groups table.
        heatmaps: log cosine/affinity heatmaps to W&B (needs matplotlib and Pillow).
        loss_fn: ``loss_fn(pl_module, batch)`` for the lookahead; by default the loss returned by
            ``training_step`` (with ``self.log`` silenced).

    Raises:
        ValueError: for an interval below 1, an empty or duplicated language list, ``top_k < 1``.
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        lookahead_every: int | None = None,
        *,
        languages: Sequence[str] | None = None,
        prefix: str = vocab.MONITOR_PREFIX,
        top_k: int = 10,
        heatmaps: bool = True,
        loss_fn: LossFn | None = None,
    ) -> None:
        _check_interval("log_every_n_steps", log_every_n_steps)
        _check_interval("lookahead_every", lookahead_every)
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}.")
        if languages is not None:
            if isinstance(languages, str) or not languages:
                raise ValueError(f"languages must be a non-empty list of names, got {languages!r}.")
            if len(set(languages)) != len(languages):
                raise ValueError(f"languages has duplicates: {list(languages)}.")
        self.log_every_n_steps = log_every_n_steps
        self.lookahead_every = lookahead_every
        self.languages = list(languages) if languages is not None else None
        self.prefix = prefix
        self.top_k = top_k
        self.heatmaps = heatmaps
        self.loss_fn = loss_fn
        #: Heatmaps and tables logged by this process (only rank 0 logs any).
        self.media_logged = 0
        #: The last metrics logged (all ranks compute them; only rank 0 writes them).
        self.last_metrics: dict[str, float] = {}
        #: The interference figures of the last step seen.
        self.last_figures: Interference | None = None
        self._every = 1
        self._reset_interval()
        self._losses = SyncedMeans()
        self._val_losses = SyncedMeans()
        self._comm_names = [m.key() for m in (vocab.BYTES_SENT, vocab.HOOK_MS, vocab.PEAK_EXTRA_MB)]
        self._comm = SyncedMeans(self._comm_names)
        self._seen: StepStats | None = None
        self._lr = math.nan
        self._slot_batches: list[tuple[str, Any]] = []
        self._current_batch: Any = None

    # -- setup -----------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(trainer.strategy, BucketMOOTraining):
            raise TypeError(
                f"InterferenceMonitor reads the statistics of the bucket-MOO hook, but the "
                f"trainer's strategy is {type(trainer.strategy).__name__}. Use "
                "Trainer(strategy=BucketMOOStrategy(...)); BucketMOOStrategy('mean') averages "
                "the languages (as DDP does when every language fills as many slots) and still "
                "measures interference."
            )
        self._every = self.log_every_n_steps or trainer.log_every_n_steps
        if self._every < 1:
            raise ValueError(f"Trainer(log_every_n_steps={self._every}) must be >= 1.")
        if self.lookahead_every is not None and not pl_module.automatic_optimization:
            raise ValueError(
                "InterferenceMonitor(lookahead_every=...) needs automatic optimization: its "
                "lookahead replays training_step on the step's batches."
            )
        self._reset_interval()
        self._seen = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = find_language_sampler(trainer)
        if self.languages is not None and sampler is not None:
            known = sampler.languages
            unknown = sorted(set(self.languages) - set(known))
            if unknown:
                raise ValueError(
                    f"InterferenceMonitor(languages=...) names {unknown}, which the training "
                    f"data's LanguageBatchSampler never serves (it has {sorted(known)})."
                )
        if trainer.is_global_zero:
            for run in _wandb_runs(trainer):
                wandb_panels.define_metrics(run, self.prefix)

    # -- training --------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._lookahead_due(trainer):
            self._current_batch = batch  # its language is known once training_step declared it

    def _keep_current_batch(self, trainer: pl.Trainer) -> None:
        if self._current_batch is not None:
            language = _strategy(trainer).declared_language
            self._slot_batches.append((language, self._current_batch))
            self._current_batch = None

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # The lr that this step applies (schedulers step after it).
        self._lr = float(optimizer.param_groups[0]["lr"])
        if self._lookahead_due(trainer):
            # The step's last batch: its training_step ran, its on_train_batch_end has not.
            self._keep_current_batch(trainer)
            batches, self._slot_batches = self._slot_batches, []
            exact = exact_affinity(trainer, pl_module, batches, self._lr, self.loss_fn)
            for pair, value in exact.items():
                self._exact[pair].append(value)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        strategy = _strategy(trainer)
        # What the strategy declared to the hook for this batch: the batch is parsed once.
        language = strategy.declared_language or strategy.language_of(batch)
        self._check_language(language)
        self._keep_current_batch(trainer)
        loss = scalar_loss(outputs)
        if loss is not None:
            if pl_module.automatic_optimization:
                loss = loss * trainer.accumulate_grad_batches  # Lightning divided it by K
            self._losses.update(language, loss.detach().float().cpu())
        state = strategy.hook_state
        stats = state.last_step if state is not None else None
        if stats is None or stats is self._seen:
            return  # within an accumulated step
        self._seen = stats
        self._add_step(stats, trainer.global_step)
        if trainer.global_step % self._every == 0:
            self._log(trainer)

    def _check_language(self, language: str) -> None:
        if self.languages is not None and language not in self.languages:
            raise ValueError(
                f"A training batch has language {language!r}, which is not in "
                f"InterferenceMonitor(languages={self.languages})."
            )

    def _lookahead_due(self, trainer: pl.Trainer) -> bool:
        M = self.lookahead_every
        return M is not None and (trainer.global_step + 1) % M == 0

    def _add_step(self, stats: StepStats, step: int) -> None:
        fig = interference(stats, step)  # labelled with the x axis the logs use
        self.last_figures = fig
        for name, value in step_scalars(fig).items():
            self._scalars[name].append(value)
        for pair, value in step_dots(fig).items():
            self._dots[pair].append(self._lr * value)
        self._tasks.update(fig.tasks)
        self._conflicts = _worst(self._conflicts + fig.conflicts, self.top_k)
        self._comm.update(vocab.BYTES_SENT.key(), float(sum(stats.bytes_sent.values())))
        self._comm.update(vocab.HOOK_MS.key(), 1000.0 * stats.hook_seconds)
        self._comm.update(vocab.PEAK_EXTRA_MB.key(), stats.peak_extra_bytes / 2**20)

    def _reset_interval(self) -> None:
        self._scalars: dict[str, list[float]] = defaultdict(list)
        self._dots: dict[tuple[str, str], list[float]] = defaultdict(list)  # lr * g_i . g_j
        self._exact: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._tasks: set[str] = set()
        self._conflicts: list[GroupConflict] = []

    # -- logging ---------------------------------------------------------------------------

    def _log(self, trainer: pl.Trainer) -> None:
        # Collective first, identically on every rank: the per-language loss sync.
        losses = self._losses.compute(self.languages)
        comm = self._comm.compute(self._comm_names)  # averaged over the ranks too
        metrics = {name: _mean(values) for name, values in self._scalars.items()}
        metrics.update({vocab.LOSS.key(lang): value for lang, value in losses.items()})
        metrics.update(comm)
        affinity = {
            (i, j): _mean(values) / losses[j]
            for (i, j), values in self._dots.items()
            if losses.get(j, 0.0) > 0
        }
        metrics.update({vocab.AFFINITY.key(i, j): v for (i, j), v in affinity.items()})
        exact = {pair: _mean(values) for pair, values in self._exact.items()}
        metrics.update({vocab.AFFINITY_EXACT.key(i, j): v for (i, j), v in exact.items()})
        metrics = {f"{self.prefix}{k}": v for k, v in metrics.items() if math.isfinite(v)}
        self.last_metrics = metrics
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            self._log_panels(trainer, affinity)
        self._reset_interval()

    def _log_panels(self, trainer: pl.Trainer, affinity: dict[tuple[str, str], float]) -> None:
        runs = _wandb_runs(trainer)
        if not runs:
            return
        images = {}
        if self.heatmaps:
            cosines = {}
            for name, values in self._scalars.items():
                pair = vocab.COS.languages_of(name)
                if pair:
                    cosines[pair] = _mean(values)
            languages = self.languages or sorted(self._tasks)
            images = wandb_panels.dashboard_heatmaps(
                cosines, affinity, languages, self.last_figures
            )
        for run in runs:
            wandb_panels.log_panels(
                run, self.prefix, trainer.global_step, images=images, conflicts=self._conflicts
            )
            self.media_logged += 1

    # -- validation ------------------------------------------------------------------------

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        loss = scalar_loss(outputs)
        if loss is None or trainer.sanity_checking:
            return
        try:
            language = _strategy(trainer).language_of(batch)
        except ValueError:
            return  # validation batches without a language get no per-language metrics
        self._val_losses.update(language, loss.detach().float().cpu())

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(trainer.strategy, BucketMOOTraining):
            return
        losses = self._val_losses.compute()
        if not losses:
            return
        metrics = {}
        for lang, value in losses.items():
            metrics[f"{self.prefix}{vocab.VAL_LOSS.key(lang)}"] = value
            metrics[f"{self.prefix}{vocab.VAL_PPL.key(lang)}"] = math.exp(min(value, 700.0))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


# -- helpers ---------------------------------------------------------------------------------


def _check_interval(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"InterferenceMonitor({name}={value!r}): must be an int >= 1 or None.")


def _strategy(trainer: pl.Trainer) -> BucketMOOTraining:
    strategy = trainer.strategy
    assert isinstance(strategy, BucketMOOTraining)
    return strategy


def _wandb_runs(trainer: pl.Trainer) -> list[Any]:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _worst(conflicts: list[GroupConflict], k: int) -> list[GroupConflict]:
    best: dict[str, GroupConflict] = {}
    for c in conflicts:
        if c.key not in best or c.cosine < best[c.key].cosine:
            best[c.key] = c
    return sorted(best.values(), key=lambda c: c.cosine)[:k]
