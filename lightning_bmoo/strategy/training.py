"""What a bucket-MOO strategy does around Lightning's training loop, whatever wraps the model.

:class:`BucketMOOTraining` is mixed into the DDP strategy (and the FSDP one): it declares each
batch's language to the hook before the step, keeps gradient sync on for every slot, checks
that optimizer steps line up with complete hook steps, checks the training data, saves and
restores the hook's and the sampler's state in checkpoints, and stops the other ranks when this
one fails. The subclass registers the hook and sets ``self._hook_state``.
"""

from __future__ import annotations

import signal
import sys
import warnings
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from ..comm import HookOptions, HookState
from ..data import LanguageBatchSampler
from .language import LanguageFn, batch_language, checked_language
from .samplers import SAMPLER_CHECKPOINT_KEY, check_training_data, find_language_sampler

#: Key of the hook's state in a Lightning checkpoint.
CHECKPOINT_KEY = "bucket_moo"

_SIGKILL = signal.SIGTERM if sys.platform == "win32" else signal.SIGKILL


class BucketMOOTraining:
    """Mixin of the bucket-MOO strategies (before the Lightning strategy class in the bases)."""

    def _init_training(
        self, options: HookOptions, language_fn: LanguageFn | None, language_key: str
    ) -> None:
        if language_fn is not None and not callable(language_fn):
            raise TypeError(f"language_fn must be callable, got {type(language_fn).__name__}.")
        self._options = options
        self._language_fn = language_fn
        self._language_key = language_key
        self._hook_state: HookState | None = None
        self._pending_checkpoint: dict[str, Any] | None = None
        self._pending_sampler: dict[str, Any] | None = None
        self._resuming = False
        self._steps_seen = 0
        self._consumed = 0  # training batches of the current epoch, for the sampler's state
        self._declared: str | None = None
        self._failed = False

    # -- public ----------------------------------------------------------------------------

    @property
    def options(self) -> HookOptions:
        """The hook's options as configured (``slots_per_rank``/``nonfinite`` may be undecided)."""
        return self._options

    @property
    def hook_state(self) -> HookState | None:
        """The hook's state while fitting (``last_step`` holds the last step's statistics)."""
        return self._hook_state

    @property
    def bmoo_state(self) -> HookState | None:
        """Deprecated name of :attr:`hook_state`."""
        warnings.warn(
            "The strategy's bmoo_state is deprecated: use hook_state.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._hook_state

    def language_of(self, batch: Any) -> str:
        """Returns the language of a training batch, as the strategy declares it to the hook.

        Raises:
            ValueError: if the batch has no language or mixes languages.
        """
        if self._language_fn is None:
            return batch_language(batch, self._language_key)
        return checked_language(self._language_fn(batch), "language_fn")

    @property
    def declared_language(self) -> str | None:
        """The language declared to the hook for the training batch in progress (or last).

        Callbacks read it instead of parsing the batch again (``on_train_batch_end``).
        """
        return self._declared

    def hook_state_dict(self) -> dict[str, Any]:
        """The hook's state as saved under ``checkpoint["bucket_moo"]``."""
        return self._require_state().state_dict()

    def load_hook_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`hook_state_dict`'s output into the registered hook.

        Differences between the checkpoint's settings and today's warn once (on rank 0).
        """
        state = self._require_state()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state.load_state_dict(saved)
        for warning in caught:
            rank_zero_warn(str(warning.message))
        self._steps_seen = state.step

    # -- for the subclass ------------------------------------------------------------------

    def _resolved_options(self, module: pl.LightningModule) -> HookOptions:
        """The options with ``slots_per_rank`` and ``nonfinite`` decided from the trainer."""
        return self._options.replace(
            slots_per_rank=self._resolve_slots_per_rank(module),
            nonfinite=self._resolve_nonfinite(),
        )

    def _hook_registered(self, state: HookState) -> None:
        """Call once the hook is registered: applies a pending checkpoint."""
        self._hook_state = state
        state.expect_scaler = self._scaler() is not None
        self._steps_seen = 0
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        if pending is not None:
            self.load_hook_state_dict(pending)
        elif self._resuming:
            rank_zero_warn(
                "The checkpoint holds no bucket-MOO state (saved by another strategy?): the hook "
                "starts at step 0 with a fresh aggregator state."
            )

    def _resolve_slots_per_rank(self, module: pl.LightningModule) -> int:
        accumulate = module.trainer.accumulate_grad_batches
        configured = self._options.slots_per_rank
        if not module.automatic_optimization:
            return configured or 1
        if configured not in (None, accumulate):
            raise ValueError(
                f"{type(self).__name__}(slots_per_rank={configured}) disagrees with "
                f"Trainer(accumulate_grad_batches={accumulate}). Under automatic optimization "
                "each accumulated microbatch is a slot: leave slots_per_rank unset."
            )
        return accumulate

    def _scaler(self) -> Any:
        return getattr(self.precision_plugin, "scaler", None)  # type: ignore[attr-defined]

    def _resolve_nonfinite(self) -> str:
        scaler = self._scaler()
        configured = self._options.nonfinite
        if configured is None:
            return "propagate" if scaler is not None else "drop"
        if configured == "drop" and scaler is not None:
            rank_zero_warn(
                "nonfinite='drop' with a GradScaler: overflowing languages are dropped instead of "
                "reaching the scaler, so the loss scale never backs off. nonfinite='propagate' "
                "(the default under 16-mixed) lets the scaler skip those steps."
            )
        if configured == "propagate" and scaler is None:
            rank_zero_warn(
                "nonfinite='propagate' without a GradScaler: a NaN/inf gradient would reach the "
                "optimizer and the weights. It is meant for precision='16-mixed'; leave "
                "nonfinite unset (or 'drop') otherwise."
            )
        return configured

    def _require_state(self) -> HookState:
        if self._hook_state is None:
            raise RuntimeError("The bucket-MOO hook is registered when fitting starts.")
        return self._hook_state

    # -- Lightning hooks -------------------------------------------------------------------

    @override
    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        if self._hook_state is None:
            return
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        automatic = self.lightning_module.automatic_optimization  # type: ignore[attr-defined]
        check_training_data(trainer, self._hook_state.slots_per_rank, automatic)
        if self._pending_sampler is not None:
            self._pending_sampler = None
            rank_zero_warn(
                "The checkpoint holds a LanguageBatchSampler's state, but the training data has "
                "no LanguageBatchSampler: the data starts from its beginning."
            )

    @override
    def process_dataloader(self, dataloader: Any) -> Any:
        dataloader = super().process_dataloader(dataloader)  # type: ignore[misc]
        sampler = getattr(dataloader, "batch_sampler", None)
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        pending = self._pending_sampler
        if pending is not None and trainer.training and isinstance(sampler, LanguageBatchSampler):
            # The last moment before Lightning creates the iterator, which a DataLoader with
            # workers starts filling at once: later, the restored position would come too late;
            # earlier, the sampler may not exist (train_dataloader() builds it).
            sampler.load_state_dict(pending)
            self._pending_sampler = None
        return dataloader

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int, *args: Any) -> None:
        super().on_train_batch_start(batch, batch_idx, *args)  # type: ignore[misc]
        self._consumed = batch_idx + 1

    @contextmanager
    @override
    def block_backward_sync(self) -> Generator[None, None, None]:
        # Lightning runs the first K - 1 accumulated backwards under no_sync(), which would
        # keep them from the hook; the hook keeps each slot's gradient apart itself.
        yield

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if self._hook_state is not None:
            batch = kwargs["batch"] if "batch" in kwargs else args[0]
            # Declared before the step runs, so that automatic and manual backwards see it.
            self._declared = self.language_of(batch)
            self._hook_state.set_slot(self._declared)
        return super().training_step(*args, **kwargs)  # type: ignore[misc]

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        step = super().optimizer_step  # type: ignore[misc]
        if self._hook_state is None:
            return step(optimizer, closure, model, **kwargs)

        def closure_then_check() -> Any:
            # Automatic optimization runs the last slot's backward inside the closure.
            result = closure()
            self._check_step_complete()
            return result

        return step(optimizer, closure_then_check, model, **kwargs)

    def _check_step_complete(self) -> None:
        state = self._require_state()
        module = self.lightning_module  # type: ignore[attr-defined]
        automatic = module is None or module.automatic_optimization
        hint = (
            "Make the training batches per epoch a multiple of accumulate_grad_batches, and "
            "run no backward under no_sync()."
            if automatic
            else f"Call optimizer.step() after every {state.slots_per_rank} backward passes "
            "(the strategy's slots_per_rank=...)."
        )
        if state.slot_index != 0:
            raise RuntimeError(
                f"The optimizer stepped after {state.slot_index} of the {state.slots_per_rank} "
                f"slots of bucket-MOO step {state.step}: the gradients hold no complete step. "
                + hint
            )
        if automatic and state.step != self._steps_seen + 1:
            raise RuntimeError(
                f"{state.step - self._steps_seen} bucket-MOO steps completed between two "
                f"optimizer steps, expected 1 (slots_per_rank={state.slots_per_rank}). " + hint
            )
        self._steps_seen = state.step

    # -- checkpoints -----------------------------------------------------------------------

    def _add_to_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the hook's and the sampler's state to a checkpoint about to be saved."""
        # Weights-only checkpoints carry no optimizer state, so no hook state either.
        state = self._hook_state
        if state is None or "optimizer_states" not in checkpoint:
            return
        if state.slot_index != 0:
            rank_zero_warn(
                f"Checkpoint saved after {state.slot_index} slots of a bucket-MOO step: those "
                "slots' gradients are not saved. Save between optimizer steps (ModelCheckpoint "
                "does)."
            )
        checkpoint[CHECKPOINT_KEY] = state.state_dict()
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        sampler = find_language_sampler(trainer)
        if sampler is not None:
            # The loop's count, not the sampler's: a DataLoader with workers fetches ahead.
            checkpoint[SAMPLER_CHECKPOINT_KEY] = {
                **sampler.state_dict(),
                "position": self._consumed,
            }

    def _take_from_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the states of a loaded checkpoint until the hook and the sampler exist."""
        self._pending_checkpoint = checkpoint.get(CHECKPOINT_KEY)
        self._pending_sampler = checkpoint.get(SAMPLER_CHECKPOINT_KEY)
        self._resuming = True

    # -- failure ---------------------------------------------------------------------------

    @override
    def on_exception(self, exception: BaseException) -> None:
        # Other ranks may be stuck in a collective or gone: teardown must not wait for them.
        self._failed = True
        super().on_exception(exception)  # type: ignore[misc]
        # Lightning's script launcher leaves the ranks it started running when this process
        # fails: a stalled one would outlive it, holding its devices. Stop them, as torchrun
        # stops every worker when one fails. (On other ranks the launcher started nothing.)
        launcher = self.launcher  # type: ignore[attr-defined]
        if isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(_SIGKILL)
