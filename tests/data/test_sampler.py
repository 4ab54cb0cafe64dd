from __future__ import annotations

import math
import warnings
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lightning_bmoo.data import LanguageBatchSampler, check_dataloader, collate_with_language

from ..trainers import quiet_trainer

SIZES = {"de": 230, "en": 600, "fi": 70, "fr": 150, "sw": 9, "yo": 25}


def language_list(sizes: dict[str, int] = SIZES) -> list[str]:
    # Interleave languages so that index order says nothing about the language.
    out: list[str] = []
    pending = dict(sizes)
    while pending:
        for lang in sorted(pending):
            out.append(lang)
            pending[lang] -= 1
            if pending[lang] == 0:
                del pending[lang]
    return out


def build(world_size: int = 1, rank: int = 0, **kwargs) -> LanguageBatchSampler:
    kwargs.setdefault("batch_size", 4)
    languages = kwargs.pop("languages", language_list())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LanguageBatchSampler(languages, world_size=world_size, rank=rank, **kwargs)


def all_ranks(world_size: int, **kwargs) -> list[LanguageBatchSampler]:
    return [build(world_size, r, **kwargs) for r in range(world_size)]


def layouts(sampler: LanguageBatchSampler) -> list[list[str]]:
    return [sampler.step_slots(t) for t in range(sampler.steps_per_epoch)]


def slot_counts(sampler: LanguageBatchSampler) -> Counter:
    return Counter(lang for step in layouts(sampler) for lang in step)


CONFIGS = [
    dict(world_size=1, slots_per_rank=1),
    dict(world_size=2, slots_per_rank=2),
    dict(world_size=3, slots_per_rank=1, probabilities="uniform"),
    dict(world_size=4, slots_per_rank=3, probabilities=0.5, drop_last=True),
    dict(world_size=2, slots_per_rank=1, probabilities={"en": 1, "sw": 1}, batch_size=16),
    dict(world_size=1, slots_per_rank=2, coverage=False, batch_size=32),
]


# layout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_every_batch_is_one_language_and_matches_the_layout(config):
    langs = language_list()
    samplers = all_ranks(**config)
    lengths = {len(s) for s in samplers}
    assert lengths == {samplers[0].steps_per_epoch * samplers[0].slots_per_rank}
    K = samplers[0].slots_per_rank
    plan = layouts(samplers[0])
    for s in samplers:
        batches = list(s)
        assert len(batches) == len(s)
        for q, batch in enumerate(batches):
            assert 0 < len(batch) <= s.batch_size
            assert {langs[i] for i in batch} == {plan[q // K][s.rank * K + q % K]}


@pytest.mark.parametrize("config", CONFIGS[:5])
def test_each_step_covers_as_many_languages_as_it_can(config):
    s = build(**config)
    expected = min(s.num_slots, len(s.languages))
    assert all(len(set(step)) == expected for step in layouts(s))


def test_layout_is_identical_on_every_rank():
    samplers = all_ranks(4, slots_per_rank=2)
    assert all(layouts(s) == layouts(samplers[0]) for s in samplers)


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ("uniform", {lang: 1 / 6 for lang in SIZES}),
        ("proportional", {lang: n / sum(SIZES.values()) for lang, n in SIZES.items()}),
        (2.0, {lang: n**0.5 / sum(m**0.5 for m in SIZES.values()) for lang, n in SIZES.items()}),
        ({"en": 3, "de": 1}, {"en": 0.75, "de": 0.25}),
    ],
)
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_shares_over_an_epoch_match_probabilities(probabilities, expected, world_size):
    s = build(world_size, probabilities=probabilities, coverage=False, steps_per_epoch=300)
    assert s.probabilities == pytest.approx(expected)
    counts = slot_counts(s)
    total = s.steps_per_epoch * s.num_slots
    for lang, p in expected.items():
        # Largest-deficit scheduling: off by a couple of slots, not by sqrt(total).
        assert abs(counts[lang] - p * total) <= 2, lang


def test_shares_converge_at_every_prefix_with_coverage():
    s = build(2, slots_per_rank=2, probabilities="uniform", steps_per_epoch=200)
    running: Counter = Counter()
    for t, step in enumerate(layouts(s)):
        running.update(step)
        for lang, p in s.probabilities.items():
            assert abs(running[lang] - (t + 1) * s.num_slots * p) <= 2


def test_coverage_clips_shares_to_what_a_step_allows_and_warns():
    langs = language_list()
    with pytest.warns(UserWarning, match="changes the shares"):
        s = LanguageBatchSampler(langs, 4, slots_per_rank=4, world_size=2, rank=0)
    # 6 languages in 8 slots: each takes >= 1 slot per step, so >= 1/8 of the slots.
    assert min(s.probabilities.values()) == pytest.approx(1 / 8)
    assert sum(s.probabilities.values()) == pytest.approx(1)
    assert s.requested_probabilities["sw"] == pytest.approx(9 / sum(SIZES.values()))
    counts = slot_counts(s)
    total = s.steps_per_epoch * s.num_slots
    assert all(abs(counts[x] - p * total) <= 2 for x, p in s.probabilities.items())


def test_no_warning_when_probabilities_are_achievable():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LanguageBatchSampler(language_list(), 4, probabilities="uniform", slots_per_rank=2)


def test_zero_probability_languages_are_never_sampled():
    s = build(probabilities={"en": 1.0, "de": 0.0})
    assert s.languages == ["en"]
    assert set(slot_counts(s)) == {"en"}


# epochs -----------------------------------------------------------------------------------------


def test_default_epoch_length_is_one_pass_over_the_data():
    s = build(2, slots_per_rank=3, batch_size=8)
    per_pass = sum(math.ceil(n / 8) for n in SIZES.values())
    assert s.steps_per_epoch == math.ceil(per_pass / 6)
    d = build(2, slots_per_rank=3, batch_size=8, drop_last=True)
    assert d.steps_per_epoch == sum(n // 8 for n in SIZES.values() if n >= 8) // 6
    assert len(build(2, slots_per_rank=3, steps_per_epoch=7)) == 21


def test_deterministic_across_instances_and_epoch_changes_order():
    a, b = build(2, 1, slots_per_rank=2), build(2, 1, slots_per_rank=2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert layouts(a) != layouts(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(build(2, 1, slots_per_rank=2, seed=1)) != first


def test_ranks_serve_disjoint_examples_unless_upsampled():
    samplers = all_ranks(3, slots_per_rank=2, probabilities="uniform", batch_size=8)
    langs = language_list()
    counts = slot_counts(samplers[0])
    per_pass = {lang: math.ceil(SIZES[lang] / 8) for lang in SIZES}
    served = Counter(i for s in samplers for batch in s for i in batch)
    upsampled = {lang for lang in SIZES if counts[lang] > per_pass[lang]}
    assert upsampled and upsampled != set(SIZES)  # uniform upsamples the small languages
    for i, n in served.items():
        if langs[i] not in upsampled:
            assert n == 1
    # An upsampled language is reshuffled per pass: every example once before any repeats.
    for lang in upsampled:
        n = Counter(served[i] for i, x in enumerate(langs) if x == lang)
        assert max(n) - min(n) <= 1, lang


# resume -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [0, 1, 5, 13])
def test_state_dict_resumes_with_exactly_the_remaining_batches(stop):
    s = build(2, 1, slots_per_rank=3)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    for _ in range(stop):
        next(it)
    state = s.state_dict()
    assert state["position"] == stop and state["epoch"] == 2

    fresh = build(2, 1, slots_per_rank=3, seed=123)  # the state restores the seed too
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # what Lightning does at the start of the resumed epoch
    assert list(fresh) == full[stop:]
    assert list(fresh) == full  # the next pass starts the epoch over


def test_restored_position_survives_a_second_iter_before_fetching():
    # A multi-worker DataLoader calls iter() on its batch sampler twice before the first batch.
    s = build(2, 0, slots_per_rank=2)
    full = list(s)
    fresh = build(2, 0, slots_per_rank=2)
    fresh.load_state_dict({**s.state_dict(), "position": 3})
    iter(fresh)
    assert fresh.state_dict()["position"] == 3
    assert list(fresh) == full[3:]


def test_state_after_a_full_epoch_resumes_to_nothing_until_the_next_epoch():
    s = build()
    list(s)
    fresh = build()
    fresh.load_state_dict(s.state_dict())
    assert list(fresh) == []
    fresh.load_state_dict(s.state_dict())
    fresh.set_epoch(1)
    assert len(list(fresh)) == len(fresh)


def test_state_from_a_different_setup_is_rejected():
    state = build(2, 0).state_dict()
    with pytest.raises(ValueError, match="world_size: saved 2, now 4"):
        build(4, 0).load_state_dict(state)
    state["position"] = 10**6
    with pytest.raises(ValueError, match="outside the epoch"):
        build(2, 0).load_state_dict(state)


# small languages --------------------------------------------------------------------------------


def test_small_language_gives_smaller_batches_without_drop_last():
    s = build(languages=["a"] * 3 + ["b"] * 20, batch_size=8, probabilities="uniform")
    a_batches = [b for b in s if b[0] < 3]
    assert a_batches and all(sorted(b) == [0, 1, 2] for b in a_batches)
    assert all(len(b) <= 8 for b in s)


def test_small_language_drops_out_with_drop_last():
    langs = ["a"] * 3 + ["b"] * 20
    with pytest.warns(UserWarning, match=r"\['a'\].*fewer than batch_size=8"):
        s = LanguageBatchSampler(langs, 8, drop_last=True, probabilities="uniform")
    assert s.languages == ["b"]
    assert all(len(b) == 8 for b in s)


# errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(probabilities={"xx": 1.0}), r"unknown language\(s\) \['xx'\]"),
        (dict(probabilities={"en": -1.0}), "negative"),
        (dict(probabilities={"en": 0.0}), "sum to zero"),
        (dict(probabilities={"en": float("nan")}), "finite"),
        (dict(probabilities="zipf"), "Unknown probabilities 'zipf'"),
        (dict(probabilities=0.0), "temperature must be > 0"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(slots_per_rank=0), "slots_per_rank must be >= 1"),
        (dict(steps_per_epoch=0), "steps_per_epoch must be >= 1"),
        (dict(rank=2, world_size=2), r"rank=2 is outside \[0, world_size=2\)"),
        (dict(rank=0, world_size=0), "world_size must be >= 1"),
        (dict(languages=[]), "dataset is empty"),
        (dict(languages={"en": [0, 1], "de": []}), r"\['de'\] have no examples"),
        (dict(languages={"en": [0, 1], "de": [1, 2]}), "repeat"),
        (dict(languages=["en"] * 3, batch_size=4, drop_last=True), "cannot be filled"),
        (
            dict(languages=["en"] * 8, batch_size=4, drop_last=True, world_size=3),
            "cannot be filled",
        ),
    ],
)
def test_bad_input_is_rejected_at_construction(kwargs, match):
    kwargs.setdefault("languages", language_list())
    kwargs.setdefault("batch_size", 4)
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LanguageBatchSampler(**kwargs)


def test_empty_language_with_zero_probability_is_allowed():
    s = build(languages={"en": [0, 1], "de": []}, probabilities={"en": 1.0}, batch_size=1)
    assert s.languages == ["en"]


# properties -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    world_size=st.integers(1, 4),
    slots=st.integers(1, 3),
    batch_size=st.integers(1, 6),
    tau=st.sampled_from([1.0, 2.0, math.inf]),
    seed=st.integers(0, 2**31),
)
def test_invariants_hold_for_random_setups(sizes, world_size, slots, batch_size, tau, seed):
    langs = language_list({f"l{i}": n for i, n in enumerate(sizes)})
    samplers = all_ranks(
        world_size,
        languages=langs,
        batch_size=batch_size,
        slots_per_rank=slots,
        probabilities=tau,
        seed=seed,
    )
    plan = layouts(samplers[0])
    distinct = min(world_size * slots, len(sizes))
    assert all(len(set(step)) == distinct for step in plan)
    assert len({len(s) for s in samplers}) == 1
    for s in samplers:
        for q, batch in enumerate(s):
            assert {langs[i] for i in batch} == {plan[q // slots][s.rank * slots + q % slots]}


# helpers ----------------------------------------------------------------------------------------


class DictDataset(Dataset):
    def __init__(self, language: str, n: int, width: int = 3) -> None:
        self.language, self.n, self.width = language, n, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((self.width,), float(i)), "ids": torch.arange(1 + i % 3)}


def test_from_datasets_and_collate_give_single_language_batches():
    datasets = {"en": DictDataset("en", 30), "de": DictDataset("de", 12)}
    sampler, dataset = LanguageBatchSampler.from_datasets(
        datasets, 4, language_key="language", probabilities="uniform", slots_per_rank=2
    )
    assert len(dataset) == 42 and sampler.languages == ["de", "en"]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_with_language)
    seen = []
    for batch in loader:
        assert isinstance(batch["language"], str)
        assert batch["x"].shape[1] == 3
        assert batch["ids"].shape == (batch["x"].shape[0], batch["ids"].shape[1])
        seen.append(batch["language"])
    assert set(seen) == {"de", "en"} and len(seen) == len(sampler)


def test_from_language_column_reads_dicts_attributes_and_columns():
    rows = [{"language": lang, "v": i} for i, lang in enumerate(language_list())]
    a = LanguageBatchSampler.from_language_column(rows, 4, probabilities="uniform")
    objs = [SimpleNamespace(lang=r["language"]) for r in rows]
    b = LanguageBatchSampler.from_language_column(objs, 4, column="lang", probabilities="uniform")

    class Columnar(list):
        column_names = ("language",)

        def __getitem__(self, key):
            return [r["language"] for r in self] if key == "language" else super().__getitem__(key)

    c = LanguageBatchSampler.from_language_column(Columnar(rows), 4, probabilities="uniform")
    assert list(a) == list(b) == list(c)
    with pytest.raises(ValueError, match="has no 'lang' field"):
        LanguageBatchSampler.from_language_column(rows, 4, column="lang")


def test_collate_pads_ragged_tensors_and_rejects_mixed_languages():
    batch = [
        {"language": "en", "ids": torch.tensor([1, 2, 3]), "y": 1},
        {"language": "en", "ids": torch.tensor([4]), "y": 0},
    ]
    out = collate_with_language(batch, padding_value={"ids": -100})
    assert out["language"] == "en"
    assert out["ids"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert out["y"].tolist() == [1, 0]
    batch[1]["language"] = "de"
    with pytest.raises(ValueError, match=r"mixes languages \['de', 'en'\]"):
        collate_with_language(batch)
    with pytest.raises(ValueError, match="without a 'language' field"):
        collate_with_language([{"ids": torch.tensor([1])}])


# Lightning --------------------------------------------------------------------------------------


def test_lightning_rewrap_fails_with_the_fix():
    from lightning.pytorch.utilities.data import _update_dataloader

    sampler = build(2, 0)
    loader = DataLoader(range(len(language_list())), batch_sampler=sampler)
    replacement = DistributedSampler(loader.dataset, num_replicas=2, rank=0)
    # What Lightning does under DDP with use_distributed_sampler=True.
    with pytest.raises(TypeError, match=r"use_distributed_sampler=False"):
        _update_dataloader(loader, replacement)


def fake_trainer(world_size=2, rank=0, accumulate=2, use_distributed_sampler=False):
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        accumulate_grad_batches=accumulate,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=use_distributed_sampler),
    )


def test_check_dataloader_explains_each_misuse():
    sampler = build(2, 1, slots_per_rank=2)
    loader = DataLoader(range(len(language_list())), batch_sampler=sampler)
    assert check_dataloader(loader, fake_trainer(rank=1)) is sampler
    assert check_dataloader(loader, 2) is sampler
    with pytest.raises(ValueError, match=r"built before torch\.distributed"):
        check_dataloader(loader, fake_trainer(world_size=4, rank=1))
    with pytest.raises(ValueError, match=r"built before torch\.distributed"):
        check_dataloader(loader, fake_trainer(rank=0))
    with pytest.raises(ValueError, match="accumulate_grad_batches=1"):
        check_dataloader(loader, fake_trainer(rank=1, accumulate=1))
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        check_dataloader(loader, fake_trainer(rank=1, use_distributed_sampler=True))
    replaced = DataLoader(loader.dataset, sampler=DistributedSampler(loader.dataset, 2, 1))
    with pytest.raises(ValueError, match=r"Lightning replaced it.*use_distributed_sampler=False"):
        check_dataloader(replaced, 2)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_trainer_sees_single_language_batches():
    import lightning.pytorch as pl

    langs = language_list()
    K = 2

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list[tuple[int, int, set[str]]] = []

        def training_step(self, batch, batch_idx):
            ids = batch.tolist()
            self.seen.append((self.current_epoch, batch_idx, {langs[i] for i in ids}))
            return self.layer(batch.float().unsqueeze(1)).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    sampler = build(slots_per_rank=K, batch_size=16, steps_per_epoch=5)
    loader = DataLoader(range(len(langs)), batch_sampler=sampler)
    trainer = quiet_trainer(max_epochs=2, accumulate_grad_batches=K)
    check_dataloader(loader, trainer)
    model = Module()
    trainer.fit(model, loader)
    assert len(model.seen) == 2 * len(sampler)
    for epoch, batch_idx, seen in model.seen:
        # Lightning reaches set_epoch through the `sampler` alias, so epoch 1 has its own plan.
        expected = sampler.step_slots(batch_idx // K, epoch=epoch)[batch_idx % K]
        assert seen == {expected}
    assert sampler.epoch == 1


class SamplerState:
    """The checkpoint callback of docs/sampler.md."""

    def __new__(cls, sampler):
        import lightning.pytorch as pl

        class _SamplerState(pl.Callback):
            def __init__(self, sampler):
                self.sampler, self.consumed = sampler, 0

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.consumed = batch_idx + 1

            def state_dict(self):
                return {**self.sampler.state_dict(), "position": self.consumed}

            def load_state_dict(self, state):
                self.sampler.load_state_dict(state)

        return _SamplerState(sampler)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_lightning_mid_epoch_resume_continues_the_schedule(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, batch.tolist()))
            return self.layer(batch.float().unsqueeze(1)).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(ckpt_path=None):
        sampler = build(slots_per_rank=2, batch_size=8, steps_per_epoch=3)
        callbacks = [SamplerState(sampler)]
        if ckpt_path is None:
            callbacks.append(
                ModelCheckpoint(tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
            )
        trainer = quiet_trainer(
            max_epochs=2,
            accumulate_grad_batches=2,
            callbacks=callbacks,
            enable_checkpointing=ckpt_path is None,
        )
        model = Module()
        loader = DataLoader(range(len(language_list())), batch_sampler=sampler)
        trainer.fit(model, loader, ckpt_path=ckpt_path)
        return model.seen

    full = fit()
    rest = fit(ckpt_path=tmp_path / "step=4.ckpt")  # mid-way through epoch 1
    assert len(rest) == 4 and rest == full[-4:]


def test_step_layout_is_a_deprecated_name_of_step_slots():
    sampler = LanguageBatchSampler(["en", "de"] * 8, 2, slots_per_rank=2)
    with pytest.warns(DeprecationWarning, match="step_slots"):
        assert sampler.step_layout(0) == sampler.step_slots(0)
