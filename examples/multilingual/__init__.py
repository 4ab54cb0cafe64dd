"""Multilingual fine-tuning example: text, data, tokenizer, model and base-model pretraining.

The parts live in one small module each:

* :mod:`.texts`: the verse-aligned public-domain Bibles of the extract in ``bible/`` (split by
  book), or the user's own folder of text.
* :mod:`.data`: text tokenised into fixed-length sequences per language, served in
  language-homogeneous batches by :class:`lightning_bmoo.data.LanguageBatchSampler`.
* :mod:`.tokenizer`: a SentencePiece BPE model trained on the training text, cached on disk.
* :mod:`.model`: a compact causal transformer LM and its ``LightningModule``.
* :mod:`.pretrain`: the base model the fine-tuning starts from, trained once and cached.
* :mod:`.cli`: the fine-tuning command line, checked before anything runs.
* :mod:`.quiet`: filters for third-party noise (Lightning's tips, deprecations).
* :mod:`.finetune`: the main example, tying them together.
"""
