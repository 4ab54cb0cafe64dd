"""The multilingual example's parts: text loading, tokenizer, datasets, model and base model."""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from examples.multilingual import model, pretrain, texts
from examples.multilingual.data import (
    LMSequenceDataset,
    build_datasets,
    build_train_loader,
    build_val_loader,
)
from examples.multilingual.model import (
    MultilingualLM,
    causal_lm_loss,
    load_pretrained,
    small_config,
    target_mask,
    with_adapters,
)
from examples.multilingual.texts import holdout_split, load_folder
from examples.multilingual.tokenizer import Tokenizer, train_tokenizer

SENTENCES = {
    "en": "the lord said unto them go and see what is written in the book of life",
    "ru": "и сказал господь им идите и посмотрите что написано в книге жизни",
    "ar": "وقال الرب لهم اذهبوا وانظروا ما هو مكتوب في سفر الحياة",
}
WORDS = {lang: sentence.split() for lang, sentence in SENTENCES.items()}


def small_corpus(n: int = 200, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {
        lang: [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)]
        for lang, words in WORDS.items()
    }


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(small_corpus(), tmp_path_factory.mktemp("spm"), vocab_size=400)


class IdTokenizer:
    """Characters as ids: makes the expected token streams obvious."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[ord(c) - ord("a") + 10 for c in t] for t in texts]


# ---- load_folder / holdout_split ----------------------------------------------------------------


def test_load_folder_reads_txt_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("first line\n\n  second line \n", encoding="utf-8")
    (tmp_path / "ru.jsonl").write_text(
        json.dumps({"text": "привет мир", "id": 1}, ensure_ascii=False)
        + "\n\n"
        + json.dumps({"text": "второй"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    assert load_folder(tmp_path) == {
        "en": ["first line", "second line"],
        "ru": ["привет мир", "второй"],
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "is empty"),
        ({"en.csv": "a,b\n"}, "unsupported file type '.csv'"),
        ({"en.txt": "\n  \n"}, "holds no examples"),
        ({"en.jsonl": '{"body": "x"}\n'}, 'expected an object with a "text" string'),
        ({"en.jsonl": "{not json\n"}, "not valid JSON"),
        ({"en.txt": "a\n", "en.jsonl": '{"text": "b"}\n'}, "both a .txt and a .jsonl"),
    ],
)
def test_load_folder_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_folder(tmp_path)


def test_load_folder_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nope")


def test_holdout_split_is_disjoint_complete_and_reproducible() -> None:
    texts = {
        "en": [f"e{i}" for i in range(100)],
        "de": [f"d{i}" for i in range(3)],
        "x": ["1", "2"],
    }
    train, val = holdout_split(texts, 0.1, seed=3)
    assert (train, val) == holdout_split(texts, 0.1, seed=3)
    assert holdout_split(texts, 0.1, seed=4)[1]["en"] != val["en"]
    for lang, items in texts.items():
        assert sorted(train[lang] + val[lang]) == sorted(items)
    assert len(val["en"]) == 10 and len(val["de"]) == 1 and len(val["x"]) == len(train["x"]) == 1


def test_holdout_split_names_languages_too_small_to_split() -> None:
    texts = {"en": ["a", "b", "c"], "fr": ["seul"], "sw": []}
    with pytest.raises(ValueError, match=r"'fr' has 1, 'sw' has 0; each language needs at least 2"):
        holdout_split(texts, 0.1)


def test_load_folder_names_the_file_and_byte_of_non_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_bytes("première ligne\ndeuxième ligne\n".encode("latin-1"))
    # 'première' in Latin-1: b'premi' then 0xe8, byte 5 of the file.
    with pytest.raises(ValueError, match=r"fr\.txt: not UTF-8 at byte 5 \(line 1"):
        load_folder(tmp_path)
    raw = b"ok\r\nstill ok\n" + "\u00e9t\u00e9".encode("cp1252")
    (tmp_path / "fr.txt").write_bytes(raw)
    with pytest.raises(ValueError, match=rf"fr\.txt: not UTF-8 at byte {raw.index(0xE9)} \(line 3"):
        load_folder(tmp_path)


def test_load_folder_refuses_a_line_longer_than_the_cap(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("short\n" + "x" * 101 + "\nshort\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"en\.txt:2: a line longer than 100 bytes \(at byte 6\)"):
        load_folder(tmp_path, max_example_bytes=100)
    (tmp_path / "en.txt").write_text("short\r\n" + "x" * 100 + "\r\n", encoding="utf-8")
    assert load_folder(tmp_path, max_example_bytes=100) == {"en": ["short", "x" * 100]}


def test_load_folder_reads_a_huge_line_only_up_to_the_cap(tmp_path: Path) -> None:
    import tracemalloc

    with (tmp_path / "en.txt").open("wb") as f:
        f.write(b"y" * (64 << 20))  # one 64 MiB line
    tracemalloc.start()
    with pytest.raises(ValueError, match="a line longer than"):
        load_folder(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # a few MiB: never the whole line


def test_load_folder_drops_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "de.txt").write_text("\ufeffHallo\nWelt\n", encoding="utf-8")
    assert load_folder(tmp_path) == {"de": ["Hallo", "Welt"]}


# ---- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_special_ids(tok: Tokenizer) -> None:
    assert (tok.pad_id, tok.hf.unk_token_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 400
    for text in ("the book of life", "в книге жизни", "في سفر الحياة"):
        ids = tok.encode(text)
        assert ids and min(ids) > 3  # no special ids, no <unk>
        assert tok.decode(ids) == text
        assert tok.decode([*ids, 0, 0]) == text  # padding is dropped
    # Characters never seen still round-trip, through byte fallback.
    assert tok.decode(tok.encode("漢字 ✓")) == "漢字 ✓"
    assert tok.decode(tok.encode(["a b", "и"])) == ["a b", "и"]


def test_hf_tokenizer_encodes_as_sentencepiece_on_every_bible(tmp_path: Path) -> None:
    import sentencepiece as spm

    pretraining = texts.load_bible(None, "pretrain", max_verses=1000)
    tokenizer = train_tokenizer(pretraining, tmp_path, vocab_size=1000)
    reference = spm.SentencePieceProcessor(model_file=str(tokenizer.path))
    for lang, verses in texts.load_bible(None, "finetune", max_verses=1500).items():
        # Some Arabic verses start with a left-to-right mark that normalisation removes.
        assert tokenizer.encode(verses) == reference.encode(verses), lang
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    again = Tokenizer.from_pretrained(saved)
    assert (again.pad_id, again.bos_id, again.eos_id) == (0, 2, 3)
    assert again.encode(verses[:50]) == reference.encode(verses[:50])


def test_tokenizer_from_a_model_folder_falls_back_to_eos(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = train_tokenizer(small_corpus(), tmp_path, vocab_size=400).hf
    no_pad = PreTrainedTokenizerFast(tokenizer_object=hf.backend_tokenizer, eos_token="</s>")
    no_pad.save_pretrained(tmp_path / "model")
    tokenizer = Tokenizer.from_pretrained(tmp_path / "model")
    assert tokenizer.pad_id == tokenizer.bos_id == tokenizer.eos_id == 3
    with pytest.raises(ValueError, match="has no eos token"):
        Tokenizer(PreTrainedTokenizerFast(tokenizer_object=hf.backend_tokenizer))
    with pytest.raises(ValueError, match="holds no loadable tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "nothing")


def test_tokenizer_is_cached_by_text_and_options(tok: Tokenizer, tmp_path: Path) -> None:
    corpus = small_corpus()
    first = train_tokenizer(corpus, tmp_path, vocab_size=400)
    stamp = first.path.stat().st_mtime_ns
    again = train_tokenizer(corpus, tmp_path, vocab_size=400)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert again.fingerprint == first.fingerprint == tok.fingerprint  # training is deterministic
    assert train_tokenizer(corpus, tmp_path, vocab_size=350).path != first.path
    assert train_tokenizer(small_corpus(seed=1), tmp_path, vocab_size=400).path != first.path
    assert len(list(tmp_path.glob("spm-*.model"))) == 3


def test_tokenizer_small_corpus_takes_the_vocabulary_it_supports(tmp_path: Path) -> None:
    small = train_tokenizer(["the book of life"] * 5, tmp_path, vocab_size=4096)
    assert 260 < small.vocab_size < 4096


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No text"):
        train_tokenizer({"en": ["", " "]}, tmp_path)
    with pytest.raises(ValueError, match="could not train"):
        train_tokenizer(small_corpus(), tmp_path, vocab_size=100)  # fewer than the characters


# ---- datasets and loaders -----------------------------------------------------------------------


def test_packed_dataset_keeps_every_token_in_order() -> None:
    texts = ["abc", "de", "fghij", "k"]
    ds = LMSequenceDataset(texts, IdTokenizer(), 4, "xx")
    stream = [t for x in IdTokenizer().encode(texts) for t in (*x, 3)]  # ids + eos each
    assert len(ds) == math.ceil(len(stream) / 4)
    item = ds[0]
    assert set(item) == {"input_ids", "language"} and item["language"] == "xx"
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (4,)
    flat = torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist()
    assert flat[: len(stream)] == stream and set(flat[len(stream) :]) <= {0}
    assert ds.num_tokens == len(stream)


def test_unpacked_dataset_truncates_and_pads_each_example() -> None:
    ds = LMSequenceDataset(["ab", "abcdefgh"], IdTokenizer(), 5, "xx", pack=False)
    assert ds[0]["input_ids"].tolist() == [2, 10, 11, 3, 0]
    assert ds[1]["input_ids"].tolist() == [2, 10, 11, 12, 3]


def test_dataset_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        LMSequenceDataset(["ab"], IdTokenizer(), 1, "xx")
    with pytest.raises(ValueError, match="No text"):
        LMSequenceDataset([], IdTokenizer(), 8, "xx")


def test_train_dataloader_follows_the_shared_schedule(tok: Tokenizer) -> None:
    datasets = build_datasets(small_corpus(), tok, 16)
    K, W = 2, 2
    loaders = [
        build_train_loader(
            datasets, 4, slots_per_rank=K, rank=r, world_size=W, seed=1, probabilities="uniform"
        )
        for r in range(W)
    ]
    sampler = loaders[0].batch_sampler
    batches = [list(loader) for loader in loaders]
    assert len(batches[0]) == len(batches[1]) == len(sampler) > 0
    for step in range(len(sampler) // K):
        layout = sampler.step_slots(step)
        got = [batches[s // K][step * K + s % K]["language"] for s in range(W * K)]
        assert got == layout and set(layout) == set(WORDS)  # 4 slots cover the 3 languages
    batch = batches[0][0]
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.long
    assert isinstance(batch["language"], str)


def test_val_dataloader_deals_each_language_over_ranks() -> None:
    datasets = {
        "big": LMSequenceDataset(["abcdefgh"] * 10, IdTokenizer(), 4, "big", pack=False),
        "one": LMSequenceDataset(["ab"], IdTokenizer(), 4, "one", pack=False),
    }
    seen: dict[str, list[list[int]]] = {"big": [], "one": []}
    for rank in range(2):
        batches = list(build_val_loader(datasets, 3, rank=rank, world_size=2))
        assert {b["language"] for b in batches} == {"big", "one"}  # same metric keys per rank
        for b in batches:
            seen[b["language"]].extend(b["input_ids"].tolist())
    assert len(seen["big"]) == 10  # each sequence evaluated once
    assert len(seen["one"]) == 2  # too few batches: both ranks evaluate it


# ---- model --------------------------------------------------------------------------------------


def tiny_config(**overrides: object) -> LlamaConfig:
    settings = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    return small_config(IdTokenizerHF(), 16, **{**settings, **overrides})


class IdTokenizerHF(IdTokenizer):
    """IdTokenizer with the vocabulary size small_config reads."""

    vocab_size = 64


def test_default_model_size_and_tied_output(tok: Tokenizer) -> None:
    config = small_config(tok, 128)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    lm = LlamaForCausalLM(small_config(IdTokenizerHF(), 128, vocab_size=4096))
    assert 1_000_000 <= lm.num_parameters() <= 5_000_000
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # output tied to the input
    ids = torch.randint(4, 4096, (2, 128))
    logits = lm(input_ids=ids).logits
    assert logits.shape == (2, 128, 4096)
    # Untrained, the loss is close to a uniform guess.
    assert abs(causal_lm_loss(logits, ids, 0).item() - math.log(4096)) < 0.5


def test_future_tokens_do_not_change_earlier_logits() -> None:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config()).eval()
    ids = torch.randint(4, 64, (3, 16))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(4, 64, (3, 7))
    a, b = lm(input_ids=ids).logits, lm(input_ids=changed).logits
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_loss_ignores_trailing_padding_only() -> None:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config())
    ids = torch.randint(4, 64, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    loss = causal_lm_loss(lm(input_ids=padded).logits, padded, 0)
    torch.testing.assert_close(loss, causal_lm_loss(lm(input_ids=ids).logits, ids, 0))
    # A pad id that also ends texts (eos as pad): inside the text it is a target, after the
    # text's last token it is padding.
    text = torch.tensor([[5, 6, 3, 7, 8, 3, 3, 3]])
    assert target_mask(text, 3).tolist() == [[True, True, True, True, False, False, False]]
    logits = torch.randn(1, 8, 64)
    targets = F.cross_entropy(logits[0, :4], text[0, 1:5], reduction="sum")
    torch.testing.assert_close(causal_lm_loss(logits, text, 3, reduction="sum"), targets)


def test_load_pretrained_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_config())
    lm.save_pretrained(tmp_path / "model")
    ids = torch.randint(4, 64, (2, 16))
    loaded = load_pretrained(tmp_path / "model")
    torch.testing.assert_close(loaded(input_ids=ids).logits, lm(input_ids=ids).logits)
    assert not loaded.training  # transformers' choice; Lightning would keep it
    assert all(m.training for m in MultilingualLM(loaded, pad_id=0).modules())
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_pretrained(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="holds no loadable causal LM"):
        load_pretrained(tmp_path / "broken")


def test_adapters_freeze_the_base_and_name_each_language() -> None:
    def trainable(model: torch.nn.Module) -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    lm = LlamaForCausalLM(tiny_config())
    assert with_adapters(lm, "none", ["en"]) is lm and trainable(lm) == {
        n for n, _ in lm.named_parameters()
    }
    shared = with_adapters(LlamaForCausalLM(tiny_config()), "shared", ["en", "ru"], rank=2)
    assert trainable(shared) and all("lora_" in n and ".default." in n for n in trainable(shared))
    per = with_adapters(LlamaForCausalLM(tiny_config()), "per-language", ["ru", "en"], rank=2)
    assert sorted(per.peft_config) == ["en", "ru"]
    assert {n.split(".")[-2] for n in trainable(per)} == {"en", "ru"}  # ...lora_A.<lang>.weight
    with pytest.raises(ValueError, match="adapters must be one of"):
        with_adapters(lm, "all", ["en"])


def test_warmup_cosine_schedule() -> None:
    f = model._WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1) and f(99) == 0.1
    assert all(f(s) >= f(s + 1) for s in range(4, 30))


def _trainer(**kwargs: object) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_multilingual_lm_trains_and_logs_per_language_validation() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    datasets = {
        lang: LMSequenceDataset(
            ["".join("abcdef"[int(i)] for i in torch.randint(0, 6, (30,), generator=gen))],
            IdTokenizer(),
            16,
            lang,
        )
        for lang in ("aa", "bb")
    }
    module = MultilingualLM(LlamaForCausalLM(tiny_config()), pad_id=0, lr=3e-3, warmup_steps=2)
    val = build_val_loader(datasets, 2)
    before = {lang: _reference_loss(module, ds) for lang, ds in datasets.items()}
    trainer = _trainer(max_steps=1, limit_train_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(module, val, verbose=False)
    metrics = trainer.callback_metrics
    for lang, loss in before.items():
        assert metrics[f"val/loss/{lang}"].item() == pytest.approx(loss, rel=1e-5)
        assert metrics[f"val/ppl/{lang}"].item() == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["val/loss"].item() == pytest.approx(sum(before.values()) / 2, rel=1e-5)

    train = build_train_loader(datasets, 2, seed=0)
    trainer = _trainer(max_steps=30, limit_val_batches=0, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train)
    assert "train/loss" in trainer.callback_metrics
    after = {lang: _reference_loss(module, ds) for lang, ds in datasets.items()}
    assert all(after[lang] < before[lang] - 0.5 for lang in datasets)


def _reference_loss(module: MultilingualLM, ds: LMSequenceDataset) -> float:
    """Token-weighted loss over the whole dataset, computed directly."""
    ids = torch.stack([ds[i]["input_ids"] for i in range(len(ds))])
    with torch.no_grad():
        return causal_lm_loss(module(ids), ids, 0).item()


def test_per_language_module_needs_adapters() -> None:
    with pytest.raises(TypeError, match="one adapter per language"):
        MultilingualLM(LlamaForCausalLM(tiny_config()), pad_id=0, per_language=True)


# ---- pretraining --------------------------------------------------------------------------------


def test_pretrain_base_is_a_cached_hugging_face_folder(tok: Tokenizer, tmp_path: Path) -> None:
    corpus = {lang: texts[:40] for lang, texts in small_corpus().items()}
    kwargs = {"seq_len": 16, "config": {"hidden_size": 32, "num_hidden_layers": 1}, "steps": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = pretrain.pretrain_base(corpus, tok, tmp_path, batch_size=4, **kwargs)
    assert path == pretrain.base_path(corpus, tok, tmp_path, batch_size=4, **kwargs)
    info = json.loads((path / pretrain.INFO_FILE).read_text())
    assert info["steps"] == 3 and info["config"]["vocab_size"] == tok.vocab_size
    assert info["languages"] == sorted(WORDS) and math.isfinite(info["final_train_loss"])
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrain.pretrain_base(corpus, tok, tmp_path, batch_size=4, **kwargs) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # no retraining
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # What a user gets: transformers loads the model and its tokenizer from the folder.
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert lm.config.hidden_size == 32 and lm.config.vocab_size == tok.vocab_size
    loaded = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert loaded("the book of life", add_special_tokens=False)["input_ids"] == tok.encode(
        "the book of life"
    )


# ---- Bible data (the committed extract) ---------------------------------------------------------


def test_missing_extract_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"en\.tsv\.xz is missing.*make_extract"):
        texts.load_bible(["en"], data_dir=tmp_path)


def test_extract_script_round_trips_through_load_bible(tmp_path: Path) -> None:
    import sqlite3

    from examples.multilingual.bible import make_extract

    db = tmp_path / "bible.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE bible (bbName, bNumber, cNumber, vNumber, vText)")
        for lang, t in texts.BIBLE_TRANSLATIONS.items():
            rows = [
                (t.bb_name, b, 1, v, f"{lang} book {b} verse {v}")
                for b in (1, 2, 40, 60)
                for v in (1, 2)
            ]
            rows += [(t.bb_name, 40, 2, 1, "see KJV"), (t.bb_name, 40, 2, 2, " a  *b*  cd ")]
            con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?)", rows)
    sizes = make_extract.extract(db, tmp_path / "out")
    assert sorted(sizes) == sorted(texts.BIBLE_TRANSLATIONS)
    got = {
        s: texts.load_bible(["de"], s, data_dir=tmp_path / "out")["de"] for s in texts.BIBLE_SPLITS
    }
    assert got == {
        "pretrain": [
            "de book 1 verse 1",
            "de book 1 verse 2",
            "de book 2 verse 1",
            "de book 2 verse 2",
        ],
        "finetune": ["de book 40 verse 1", "de book 40 verse 2", "a b cd"],
        "validation": ["de book 60 verse 1", "de book 60 verse 2"],
    }


def test_bible_unknown_language_or_split() -> None:
    with pytest.raises(ValueError, match="No public-domain Bible for \\['pt'\\]"):
        texts.load_bible(["pt"])
    with pytest.raises(ValueError, match="Unknown split"):
        texts.load_bible(["en"], "test")


def test_bible_splits_are_disjoint_books() -> None:
    books = [set(b) for b in texts.BIBLE_SPLITS.values()]
    assert sum(map(len, books)) == len(set.union(*books)) == 66


def test_bible_texts() -> None:
    splits = {s: texts.load_bible(None, s) for s in texts.BIBLE_SPLITS}
    en = {s: by_lang["en"] for s, by_lang in splits.items()}
    assert en["pretrain"][0].startswith("In the beginning God created the heaven and the earth")
    assert en["finetune"][0].startswith("The book of the generation of Jesus Christ")
    assert en["validation"][0].startswith("James, a servant of God")
    assert [len(en[s]) for s in ("pretrain", "finetune", "validation")] == [4000, 7526, 431]
    for split, by_lang in splits.items():
        assert list(by_lang) == list(texts.BIBLE_TRANSLATIONS)
        for lang, verses in by_lang.items():
            # verse-aligned translations: within a few verses of English after cleaning
            assert abs(len(verses) - len(en[split])) <= 10, (split, lang)
            assert not any(re.search(r"KJV|MISSING|\*|\s\s", v) for v in verses), (split, lang)
    # No verse is shared between splits.
    for lang in texts.BIBLE_TRANSLATIONS:
        seen = [set(splits[s][lang]) for s in ("finetune", "validation")]
        assert not (seen[0] & seen[1])
        assert not (seen[1] & set(splits["pretrain"][lang]))
    val = splits["validation"]
    scripts = {"ru": "[а-яА-Я]", "ar": "[\u0621-\u064a]", "fa": "[پچژگک]", "de": "[äöüß]"}
    for lang, pattern in scripts.items():
        assert sum(bool(re.search(pattern, v)) for v in val[lang]) > 0.5 * len(val[lang]), lang


def test_bible_max_verses_spreads_over_the_split() -> None:
    full = texts.load_bible(["fr"], "validation")["fr"]
    few = texts.load_bible(["fr"], "validation", max_verses=10)["fr"]
    assert len(few) == 10 and few[0] == full[0] and set(few) <= set(full)
    assert full.index(few[-1]) > 0.8 * len(full)
