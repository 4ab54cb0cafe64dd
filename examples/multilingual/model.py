"""A compact causal transformer LM in plain torch, and the LightningModule that trains it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual torch spelling)

__all__ = ["LMConfig", "MultilingualLM", "TransformerLM", "causal_lm_loss", "load_state_dict_file"]

PAD_ID = 0  # matches tokenizer.PAD_ID; repeated so the model does not depend on sentencepiece


@dataclass(frozen=True)
class LMConfig:
    """Shape of :class:`TransformerLM`. The defaults give ~1.3M parameters at vocab 4096."""

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_seq_len: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        # Padding is always on the right, so the causal mask alone keeps real tokens from
        # attending to it; no key-padding mask is needed.
        attn = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerLM(nn.Module):
    """Decoder-only LM: learned positions, pre-norm blocks, output tied to the embedding.

    It registers no buffers, so DDP has nothing to broadcast in forward (and validation on
    ranks with different batch counts issues no collectives).
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.apply(self._init)
        # GPT-2's scaling: residual outputs shrink with depth so the stream's variance is stable.
        for block in self.blocks:
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for ``input_ids`` ``[batch, seq]``."""
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"Sequence length {t} exceeds max_seq_len={self.config.max_seq_len}.")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.tok_emb.weight.T

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def causal_lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy; targets equal to the pad id are ignored."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        input_ids[:, 1:].reshape(-1),
        ignore_index=PAD_ID,
        reduction=reduction,
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A :class:`TransformerLM` state dict from a file.

    Accepts a plain state dict (as :mod:`.pretrain` saves) or a Lightning checkpoint of
    :class:`MultilingualLM` (its ``state_dict`` with the ``model.`` prefix removed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Base checkpoint {path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    prefix = "model."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


class MultilingualLM(pl.LightningModule):
    """Causal LM fine-tuning with per-language validation.

    Logs ``train/loss`` every step; per validation epoch ``val/loss/<lang>`` and
    ``val/ppl/<lang>`` (token-weighted over all ranks) and ``val/loss``, the mean over
    languages, so that every language counts the same whatever its token count.

    Args:
        config: the model's shape (an :class:`LMConfig` or its dict); defaults when None.
        lr: peak learning rate of AdamW.
        weight_decay: applied to matrices only, not to norms, biases and embeddings.
        warmup_steps: linear warm-up from 0 to ``lr``.
        max_steps: length of the cosine decay; ``trainer.estimated_stepping_batches`` if None.
        min_lr_ratio: the learning rate at the end of the decay, as a fraction of ``lr``.
        languages: validation languages. Every rank must log the same metric keys, so fix
            them here when a rank's validation batches might miss a language
            (:func:`.data.build_val_loader` never does); by default each rank uses the languages
            it saw.
        base_checkpoint: a base state dict file to start from (see :meth:`load_base`).
    """

    def __init__(
        self,
        config: LMConfig | Mapping[str, Any] | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        languages: Sequence[str] | None = None,
        base_checkpoint: str | Path | None = None,
    ) -> None:
        super().__init__()
        cfg = config if isinstance(config, LMConfig) else LMConfig(**(config or {}))
        # Saved as a plain dict (read from this frame's locals), so checkpoints reload without
        # unpickling the dataclass; the base file is not needed once the weights are loaded.
        config = asdict(cfg)
        self.save_hyperparameters(ignore=["base_checkpoint"])
        self.model = TransformerLM(cfg)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        self.languages = sorted(languages) if languages is not None else None
        self._val_sums: dict[str, torch.Tensor] = {}
        if base_checkpoint is not None:
            self.load_base(base_checkpoint)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def load_base(self, checkpoint_path: str | Path) -> None:
        """Initialises the weights from a base model's state dict file.

        Raises:
            ValueError: if parameters are missing, unexpected or of another shape, e.g. a base
                trained with another tokenizer (vocabulary size) or model shape.
        """
        state = load_state_dict_file(checkpoint_path)
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or shapes:
            details = "; ".join(
                part
                for part in (
                    f"missing {missing[:5]}" if missing else "",
                    f"unexpected {unexpected[:5]}" if unexpected else "",
                    f"shape mismatch {shapes[:5]}" if shapes else "",
                )
                if part
            )
            raise ValueError(
                f"Base checkpoint {checkpoint_path} does not fit this model ({details}). The "
                "base must be trained with the same tokenizer (vocab_size) and LMConfig "
                f"({self.model.config})."
            )
        self.model.load_state_dict(state)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        input_ids = batch["input_ids"]
        loss = causal_lm_loss(self.model(input_ids), input_ids)
        self.log("train/loss", loss, prog_bar=True, batch_size=input_ids.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        input_ids, lang = batch["input_ids"], batch["language"]
        loss_sum = causal_lm_loss(self.model(input_ids), input_ids, reduction="sum")
        tokens = (input_ids[:, 1:] != PAD_ID).sum()
        sums = self._val_sums.setdefault(lang, torch.zeros(2, dtype=torch.float64))
        sums += torch.stack([loss_sum.detach().double().cpu(), tokens.double().cpu()])

    def on_validation_epoch_end(self) -> None:
        languages = self.languages if self.languages is not None else sorted(self._val_sums)
        if not languages:
            return
        zero = torch.zeros(2, dtype=torch.float64)
        local = torch.stack([self._val_sums.get(lang, zero) for lang in languages])
        # One reduction of the (loss sum, token count) pairs gives exact token-weighted means
        # over all ranks, which averaging per-rank means would not.
        total = self.trainer.strategy.reduce(local.to(self.device), reduce_op="sum").cpu()
        losses = []
        for lang, (loss_sum, tokens) in zip(languages, total.tolist()):
            if tokens == 0:
                continue
            loss = loss_sum / tokens
            losses.append(loss)
            # The values are already global; sync_dist only averages identical numbers and
            # keeps Lightning from warning about epoch-level logging under DDP.
            self.log(f"val/loss/{lang}", loss, sync_dist=True)
            self.log(f"val/ppl/{lang}", math.exp(min(loss, 50.0)), sync_dist=True)
        if losses:
            self.log("val/loss", sum(losses) / len(losses), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=(0.9, 0.95),
        )
        total = self.max_steps or int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _WarmupCosine(self.warmup_steps, total, self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class _WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
