"""InterferenceMonitor: logs gradient interference between languages from the hook's statistics."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from typing_extensions import override

from .. import vocabulary as vocab
from ..comm.stats import StepStats
from ..strategy import BucketMOOStrategy, find_language_sampler
from . import wandb_panels
from .figures import GroupConflict, Interference, interference, pair_matrix, step_dots, step_scalars

#: ``loss_fn(pl_module, batch) -> scalar loss`` used by the exact lookahead.
LossFn = Callable[[pl.LightningModule, Any], Tensor]


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

    With ``BucketMOOStrategy("mean")`` the update is plain data-parallel averaging, so the monitor
    measures the interference of an ordinary run: measure first, then switch MOO on.

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
        self._losses: dict[str, MeanMetric] = {}
        self._val_losses: dict[str, MeanMetric] = {}
        self._comm = {
            m.key(): MeanMetric(sync_on_compute=False)
            for m in (vocab.BYTES_SENT, vocab.HOOK_MS, vocab.PEAK_EXTRA_MB)
        }
        self._seen: StepStats | None = None
        self._lr = math.nan
        self._slot_batches: list[tuple[str, Any]] = []

    # -- setup -----------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(trainer.strategy, BucketMOOStrategy):
            raise TypeError(
                f"InterferenceMonitor reads the statistics of the bucket-MOO hook, but the "
                f"trainer's strategy is {type(trainer.strategy).__name__}. Use "
                "Trainer(strategy=BucketMOOStrategy(...)); BucketMOOStrategy('mean') trains "
                "exactly like DDP and still measures interference."
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
        known = _sampler_languages(trainer)
        if self.languages is not None and known is not None:
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
            language = _strategy(trainer).language_of(batch)
            self._slot_batches.append((language, batch))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # The lr that this step applies (schedulers step after it).
        self._lr = float(optimizer.param_groups[0]["lr"])
        if self._lookahead_due(trainer):
            batches, self._slot_batches = self._slot_batches, []
            exact = _lookahead(trainer, pl_module, batches, self._lr, self.loss_fn)
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
        language = _strategy(trainer).language_of(batch)
        self._check_language(language)
        loss = _loss(outputs)
        if loss is not None:
            if pl_module.automatic_optimization:
                loss = loss * trainer.accumulate_grad_batches  # Lightning divided it by K
            _metric(self._losses, language).update(loss.detach().float().cpu())
        state = _strategy(trainer).hook_state
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
        self._comm[vocab.BYTES_SENT.key()].update(float(sum(stats.bytes_sent.values())))
        self._comm[vocab.HOOK_MS.key()].update(1000.0 * stats.hook_seconds)
        self._comm[vocab.PEAK_EXTRA_MB.key()].update(stats.peak_extra_bytes / 2**20)

    def _reset_interval(self) -> None:
        self._scalars: dict[str, list[float]] = defaultdict(list)
        self._dots: dict[tuple[str, str], list[float]] = defaultdict(list)  # lr * g_i . g_j
        self._exact: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._tasks: set[str] = set()
        self._conflicts: list[GroupConflict] = []

    # -- logging ---------------------------------------------------------------------------

    def _log(self, trainer: pl.Trainer) -> None:
        # Collective first, identically on every rank: the per-language loss sync.
        losses = _compute_synced(self._losses, self.languages)
        comm = _compute_synced(self._comm, list(self._comm))  # averaged over the ranks too
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
        languages = self.languages or sorted(self._tasks)
        images = {}
        if self.heatmaps:
            cos = {}
            for name, values in self._scalars.items():
                pair = vocab.COS.languages_of(name)
                if pair:
                    a, b = pair
                    cos[a, b] = cos[b, a] = _mean(values)
            cos.update({(lang, lang): 1.0 for lang in self._tasks})
            images[vocab.COS_HEATMAP.family] = wandb_panels.heatmap(
                pair_matrix(cos, languages), languages, vocab.COS_HEATMAP.title
            )
            if affinity:
                images[vocab.AFFINITY_HEATMAP.family] = wandb_panels.heatmap(
                    pair_matrix(affinity, languages), languages, vocab.AFFINITY_HEATMAP.title
                )
            fig = self.last_figures
            if fig is not None and fig.conflicts:
                images[vocab.GROUP_COS_HEATMAP.family] = _group_heatmap(fig)
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
        loss = _loss(outputs)
        if loss is None or trainer.sanity_checking:
            return
        try:
            language = _strategy(trainer).language_of(batch)
        except ValueError:
            return  # validation batches without a language get no per-language metrics
        _metric(self._val_losses, language).update(loss.detach().float().cpu())

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(trainer.strategy, BucketMOOStrategy):
            return
        losses = _compute_synced(self._val_losses, None)
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


def _strategy(trainer: pl.Trainer) -> BucketMOOStrategy:
    strategy = trainer.strategy
    assert isinstance(strategy, BucketMOOStrategy)
    return strategy


def _sampler_languages(trainer: pl.Trainer) -> list[str] | None:
    sampler = find_language_sampler(trainer)
    return None if sampler is None else list(sampler.languages)


def _wandb_runs(trainer: pl.Trainer) -> list[Any]:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _loss(outputs: Any) -> Tensor | None:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, Tensor) and outputs.numel() == 1:
        return outputs.reshape(())
    return None


def _metric(metrics: dict[str, MeanMetric], language: str) -> MeanMetric:
    if language not in metrics:
        # Synced by _compute_synced, all metrics in one collective.
        metrics[language] = MeanMetric(sync_on_compute=False)
    return metrics[language]


def _compute_synced(
    metrics: dict[str, MeanMetric], names: Sequence[str] | None
) -> dict[str, float]:
    """Means of every metric over the interval and the ranks, in one all-reduce; resets them.

    ``names``: the metrics every rank has (all ranks pass the same). Without it, ranks may have
    seen different languages: they first agree on the union of names, so that every rank
    reduces the same metrics in the same order. One all-reduce of the metrics'
    (weighted sum, weight) states replaces torchmetrics' per-metric sync (four collectives
    each), which cost tens of milliseconds per logging step on gloo.
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if names is not None:
        ordered = sorted(names)
    else:
        ordered = sorted(metrics)
        if distributed:
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, ordered)
            ordered = sorted(set().union(*everyone))
    states = torch.zeros(2, len(ordered), dtype=torch.float64)
    for k, name in enumerate(ordered):
        metric = _metric(metrics, name)
        states[0, k] = float(metric.mean_value)
        states[1, k] = float(metric.weight)
        metric.reset()
    if distributed and ordered:
        dist.all_reduce(states)
    return {
        name: float(states[0, k] / states[1, k])
        for k, name in enumerate(ordered)
        if states[1, k] > 0 and math.isfinite(float(states[0, k]))
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _worst(conflicts: list[GroupConflict], k: int) -> list[GroupConflict]:
    best: dict[str, GroupConflict] = {}
    for c in conflicts:
        if c.key not in best or c.cosine < best[c.key].cosine:
            best[c.key] = c
    return sorted(best.values(), key=lambda c: c.cosine)[:k]


def _group_heatmap(fig: Interference) -> Any:
    tasks = fig.tasks
    pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
    # Large models have hundreds of groups: show the most conflicting ones only.
    keys = list(dict.fromkeys(c.key for c in fig.conflicts[:40]))
    position = {key: g for g, key in enumerate(fig.group_keys)}
    rows = [[float(fig.group_cos[position[k], i, j]) for i, j in pairs] for k in keys]
    return wandb_panels.heatmap(
        torch.tensor(rows, dtype=torch.float64).reshape(len(keys), len(pairs)),
        keys,
        f"{vocab.GROUP_COS_HEATMAP.title}, step {fig.step} (most conflicting first)",
        columns=[vocab.pair_name(tasks[i], tasks[j]) for i, j in pairs],
    )


# -- exact lookahead (TAG) -------------------------------------------------------------------


def _lookahead(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    local: list[tuple[str, Any]],
    lr: float,
    loss_fn: LossFn | None,
) -> dict[tuple[str, str], float]:
    """Exact TAG affinity ``1 - L_j(theta - lr g_i) / L_j(theta)`` on the step's batches.

    Every rank receives every slot's batch; rank ``r`` handles the languages ``i`` at positions
    ``r, r + W, ...`` (one backward per slot of ``i``, one forward per slot and language); the
    results are gathered so that every rank returns all pairs.
    """
    slots = _gather_objects(local)
    by_language: dict[str, list[Any]] = defaultdict(list)
    for language, batch in slots:
        by_language[language].append(trainer.strategy.batch_to_device(batch))
    languages = sorted(by_language)
    rank, world = trainer.global_rank, trainer.world_size
    params = [p for p in pl_module.parameters() if p.requires_grad]
    compute = loss_fn or _training_loss
    out: dict[tuple[str, str], float] = {}
    with _silenced(pl_module), trainer.precision_plugin.forward_context():

        def loss_of(language: str) -> Tensor:
            losses = []
            for k, batch in enumerate(by_language[language]):
                # The same seed before and after the lookahead step: same dropout masks.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(k)
                    losses.append(compute(pl_module, batch).float())
            return torch.stack(losses).mean()

        with torch.no_grad():
            before = {j: float(loss_of(j)) for j in languages}
        for i in languages[rank::world]:
            grads = torch.autograd.grad(loss_of(i), params, allow_unused=True)
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.sub_(lr * g)
                for j in languages:
                    if j != i and before[j] > 0:
                        out[i, j] = 1.0 - float(loss_of(j)) / before[j]
                for p, s in zip(params, saved):
                    p.copy_(s)
    merged: dict[tuple[str, str], float] = {}
    for part in _gather_objects([out]):
        merged.update(part)
    return merged


def _gather_objects(local: list[Any]) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return [item for part in everyone for item in part]


def _training_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    loss = _loss(pl_module.training_step(batch, 0))
    if loss is None:
        raise ValueError(
            "InterferenceMonitor's lookahead needs training_step to return the loss (a tensor or "
            "a dict with 'loss'); pass InterferenceMonitor(loss_fn=...) otherwise."
        )
    return loss


@contextmanager
def _silenced(pl_module: pl.LightningModule) -> Iterator[None]:
    # Replaying training_step must not log its metrics a second time.
    pl_module.log = _no_log  # type: ignore[method-assign]
    pl_module.log_dict = _no_log  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None
