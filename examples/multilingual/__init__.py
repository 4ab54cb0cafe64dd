"""Multilingual fine-tuning example: text, data, tokenizer, model and base-model pretraining.

The parts live in one small module each:

* :mod:`.texts`: the verse-aligned public-domain Bibles of the extract in ``bible/`` (split by
  book), or the user's own folder of text.
* :mod:`.data`: text tokenised into fixed-length sequences per language, served in
  language-homogeneous batches by :class:`lightning_bmoo.data.LanguageBatchSampler`.
* :mod:`.tokenizer`: a SentencePiece BPE model trained on the training text (cached on disk)
  as a Hugging Face tokenizer, or a local model's own.
* :mod:`.model`: a ``transformers`` causal LM (a small Llama, or yours), LoRA adapters, and the
  ``LightningModule`` that trains it.
* :mod:`.pretrain`: the base model the fine-tuning starts from, trained once and cached as a
  Hugging Face model folder.
* :mod:`.cli`: the fine-tuning command line, checked before anything runs.
* :mod:`.finetuned`: the model fine-tuning trains, built from the options and saved at the end.
* :mod:`.quiet`: filters for third-party noise (Lightning's tips, deprecations).
* :mod:`.finetune`: the main example, tying them together.
"""
