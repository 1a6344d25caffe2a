"""Protocol ``finetune``: the task split, label budgets, the unlabelled rest, strategy × protocol
checks, and every supporting strategy end to end on a tiny task (issue 15)."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SUITE

import tlbench
from tlbench.cli import main
from tlbench.data.budgets import Budget
from tlbench.data.domains import TEST, TRAIN, Domain
from tlbench.data.splits import TEST_FRACTION, VALIDATION_FRACTION, train_test_split
from tlbench.data.tasks import split_task
from tlbench.errors import UserError
from tlbench.plugins.registry import Registry
from tlbench.spec.cell import CellTask
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.training.strategy import Batch

FINETUNE = TINY_SUITE.replace(
    "pairs: [digits->digits+invert]", "protocol: finetune\ntasks: [digits]\nbudgets: [10%, 100%]"
).replace("[source_only, dann]", "[source_only]")
#: every built-in strategy that supports finetune; kd's teacher is fine-tuned on the same task and budget
SUPPORTING = "[source_only, freeze, unfreeze, dlr, self_training, {kd: {teacher_strategy: source_only}}]"


def _domain(counts: list[int], split: torch.Tensor | None = None) -> Domain:
    """A domain of ``counts[c]`` images of class ``c``; each image's pixels hold its own index."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    index = torch.arange(len(labels))
    images = torch.stack([index % 256, index // 256, torch.zeros_like(index)], 1)[:, :, None, None]
    return Domain(
        "toy",
        images.to(torch.uint8).expand(-1, -1, 2, 2).contiguous(),
        labels,
        [f"c{i}" for i in range(len(counts))],
        split=split,
    )


def _suite(tmp_path: Path, text: str = FINETUNE, strategies: str = "[source_only]") -> Path:
    path = tmp_path / "ft.yaml"
    path.write_text(text.replace("strategies: [source_only]\n", f"strategies: {strategies}\n"))
    return path


def _per_class(labels: torch.Tensor, index: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(labels[index], minlength=k).tolist()


# -- the split -----------------------------------------------------------------------------------
def test_the_test_split_is_stratified_deterministic_disjoint_and_no_seed_changes_it():
    counts = [3, 10, 41, 100, 2]
    domain = _domain(counts)
    split = train_test_split(domain)
    assert not split.official
    assert torch.equal(split.train, train_test_split(domain).train)  # deterministic
    assert not set(split.train.tolist()) & set(split.test.tolist())  # disjoint, checked on indices
    assert sorted(split.train.tolist() + split.test.tolist()) == list(range(sum(counts)))
    expected = [min(max(round(TEST_FRACTION * n), 1), n - 1) for n in counts]
    assert _per_class(domain.labels, split.test, 5) == expected  # stratified: every class tested
    cuts = [split_task(domain, Budget.parse(b), seed) for b in ("10%", "100%", "1-shot") for seed in (0, 1, 7)]
    for cut in cuts:  # every budget and seed: the same test images, none of them ever trained on
        assert torch.equal(cut.scored, split.test)
        trained = set(cut.labelled.tolist()) | set(cut.unlabelled.tolist())
        assert not trained & set(split.test.tolist())
        assert sorted(trained) == sorted(split.train.tolist())
        assert not set(cut.labelled.tolist()) & set(cut.unlabelled.tolist())


def test_the_validation_split_is_carved_from_training_images_and_never_touches_the_test_split():
    domain = _domain([20, 30, 50])
    test = set(train_test_split(domain).test.tolist())
    cut = split_task(domain, Budget.parse("50%"), seed=3, score_on="validation")
    assert not set(cut.scored.tolist()) & test
    assert not (set(cut.labelled.tolist()) | set(cut.unlabelled.tolist())) & (test | set(cut.scored.tolist()))
    train = len(domain) - len(test)
    assert abs(len(cut.scored) - VALIDATION_FRACTION * train) <= 3
    assert torch.equal(cut.scored, split_task(domain, Budget.parse("10%"), seed=9, score_on="validation").scored)


def test_an_official_split_is_honoured():
    split = torch.tensor([TRAIN] * 7 + [TEST] * 3 + [TRAIN] * 5 + [TEST] * 2, dtype=torch.uint8)
    domain = _domain([10, 7], split)
    cut = split_task(domain, Budget.parse("100%"), seed=0)
    assert torch.equal(cut.scored, torch.nonzero(split == TEST).flatten()) and cut.official
    assert sorted(cut.labelled.tolist()) == torch.nonzero(split == TRAIN).flatten().tolist()
    assert torch.equal(domain.subset(torch.tensor([0, 8])).split, torch.tensor([TRAIN, TEST], dtype=torch.uint8))


def test_a_class_with_test_images_but_no_training_image_is_named():
    split = torch.tensor([TRAIN] * 4 + [TEST] * 2, dtype=torch.uint8)
    with pytest.raises(UserError, match="class 'c1' has test images but no training image"):
        split_task(_domain([4, 2], split), Budget.parse("100%"), seed=0)


def test_npz_reads_the_split_array_usps_ships(tmp_path):
    from tlbench_builtins.datasets.npz import Npz

    x = np.zeros((6, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]), split=np.array([0, 0, 0, 0, 1, 1]))
    np.savez(tmp_path / "bad.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]), split=np.array([0, 2, 0, 0, 1, 1]))
    domain = Npz(tmp_path, files={"d": "d.npz", "bad": "bad.npz"}).load("d", 4)
    assert domain.split.tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(UserError, match="split in .*bad.npz must hold 0 \\(train\\) or 1 \\(test\\)"):
        Npz(tmp_path, files={"d": "d.npz", "bad": "bad.npz"}).load("bad", 4)


@pytest.mark.data
def test_usps_has_its_official_split(shared_data):
    from tlbench_builtins.datasets.npz import Npz

    domain = Npz(shared_data, files={"usps": "digits/usps.npz"}).load("usps", 16)
    split = train_test_split(domain)
    assert split.official and (len(split.train), len(split.test)) == (7291, 2007)


# -- image folders with their own split ------------------------------------------------------------
def _write_images(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (6, 6), (40 * i % 256, 0, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_an_image_folder_with_train_and_test_is_read_with_its_own_split(tmp_path, test_name):
    from tlbench_builtins.datasets.image_folder import ImageFolder

    root = tmp_path / "flowers"
    for cls, (n_train, n_test) in {"rose": (4, 2), "tulip": (3, 1)}.items():
        _write_images(root / "train" / cls, n_train)
        _write_images(root / test_name / cls, n_test)
    dataset = ImageFolder(None, path=str(root))
    assert dataset.domains() == ["flowers"]  # one task, named after its folder
    domain = dataset.load("flowers", 8)
    assert domain.classes == ["rose", "tulip"] and len(domain) == 10
    cut = split_task(domain, Budget.parse("100%"), seed=0)
    assert cut.official and len(cut.scored) == 3
    assert sorted(domain.labels[cut.scored].tolist()) == [0, 0, 1]
    assert len(cut.labelled) == 7 and not set(cut.labelled.tolist()) & set(cut.scored.tolist())


def test_domain_folders_may_each_hold_their_own_split(tmp_path):
    from tlbench_builtins.datasets.image_folder import ImageFolder

    _write_images(tmp_path / "photos" / "a", 3)
    _write_images(tmp_path / "photos" / "b", 3)
    for part, n in (("train", 2), ("test", 1)):
        _write_images(tmp_path / "sketches" / part / "a", n)
        _write_images(tmp_path / "sketches" / part / "b", n)
    dataset = ImageFolder(None, path=str(tmp_path))
    assert dataset.domains() == ["photos", "sketches"] and dataset.classes() == ["a", "b"]
    assert dataset.load("photos", 8).split is None
    assert dataset.load("sketches", 8).split.tolist() == [TRAIN, TRAIN, TEST, TRAIN, TRAIN, TEST]


def test_a_test_folder_without_a_class_of_train_is_named(tmp_path):
    from tlbench_builtins.datasets.image_folder import ImageFolder

    _write_images(tmp_path / "t" / "train" / "a", 2)
    _write_images(tmp_path / "t" / "train" / "b", 2)
    _write_images(tmp_path / "t" / "test" / "a", 1)
    with pytest.raises(UserError, match="class 'b' is missing from .*test; its train/ and test/ folders"):
        ImageFolder(None, path=str(tmp_path / "t")).load("t", 8)


# -- budgets ---------------------------------------------------------------------------------------
def test_budgets_are_exact_per_class_and_drawn_per_seed():
    counts = [2, 9, 20, 55]
    labels = _domain(counts).labels
    labelled, rest = Budget.parse("10%").draw(labels, seed=0)
    assert _per_class(labels, labelled, 4) == [1, 1, 2, 6]  # round(0.1 n), never empty, never all
    assert sorted(labelled.tolist() + rest.tolist()) == list(range(len(labels)))
    shot, _ = Budget.parse("2-shot").draw(labels, seed=0)
    assert _per_class(labels, shot, 4) == [2, 2, 2, 2]
    everything, none = Budget.parse("100%").draw(labels, seed=0)
    assert len(everything) == len(labels) and len(none) == 0
    assert not torch.equal(Budget.parse("10%").draw(labels, seed=1)[0], labelled)  # a seed draws its own
    assert torch.equal(Budget.parse("10%").draw(labels, seed=0)[0], labelled)
    with pytest.raises(UserError, match="budget 3-shot: class 0 has 2 image\\(s\\), fewer than the 3"):
        Budget.parse("3-shot").draw(labels, seed=0)


@pytest.mark.parametrize(
    "text, canonical",
    [("10%", "10%"), ("100 %", "100%"), ("5-shot", "5-shot"), ("1 shot", "1-shot"), ("12.5%", "12.5%")],
)
def test_budget_texts(text, canonical):
    assert str(Budget.parse(text)) == canonical


@pytest.mark.parametrize("text", ["0%", "101%", "ten", "0-shot", "", "5"])
def test_bad_budgets_are_one_line(text):
    with pytest.raises(UserError, match="write a share of the training labels such as '10%'"):
        Budget.parse(text)


# -- held-back labels never reach a strategy -------------------------------------------------------
SEEN: list[Batch] = []


class Spy(tlbench.Strategy):
    """Supervised steps that keep every batch they are served."""

    name = "spy"
    target_views = ("weak", "strong")
    protocols = ("finetune",)

    def training_step(self, batch, ctx):
        SEEN.append(batch)
        return self.supervised_step(batch, ctx)


SPY = types.SimpleNamespace(register_strategies=tlbench.hookimpl(lambda register: register(Spy)))


def test_held_back_labels_and_test_images_never_reach_a_strategy(tmp_path, monkeypatch):
    import tlbench.training.engine as engine
    from tlbench.data.cache import load_domain
    from tlbench_builtins.datasets.sklearn_digits import SklearnDigits

    registry = Registry(plugins={"spy": SPY})
    text = FINETUNE.replace("budgets: [10%, 100%]", "budgets: [10%]")
    cells = plan(load_suite(_suite(tmp_path, text, "[spy]")), registry).cells
    served = {}
    build = engine.BatchSource.build

    def capture(source_images, source_labels, target_images, *args, **kwargs):
        served.update(source=source_images, labels=source_labels, target=target_images)
        return build(source_images, source_labels, target_images, *args, **kwargs)

    monkeypatch.setattr(engine.BatchSource, "build", capture)
    SEEN.clear()
    record = engine.train_cell(
        CellTask(
            cell=cells[0],
            out_dir=str(tmp_path / "out"),
            data_root=None,
            cache_dir=None,
            device="cpu",
            show_progress=False,
        ),
        registry,
    )
    task = load_domain(SklearnDigits(), "digits", 18, cache_dir=None)
    cut = split_task(task, Budget.parse("10%"), seed=0)
    # the labelled side is exactly the budget's images and labels, the unlabelled side exactly the rest
    assert torch.equal(served["source"], task.images[cut.labelled])
    assert torch.equal(served["labels"], task.labels[cut.labelled])
    assert torch.equal(served["target"], task.images[cut.unlabelled])
    # no batch field carries target labels; every served index is one of the held-back images
    assert [f.name for f in dataclasses.fields(Batch) if "label" in f.name] == ["source_labels"]
    assert len(SEEN) == 6 and all(b.target_index.max() < len(cut.unlabelled) for b in SEEN)
    assert not set(cut.scored.tolist()) & (set(cut.labelled.tolist()) | set(cut.unlabelled.tolist()))
    assert (record.train_images, record.test_images) == (len(cut.labelled) + len(cut.unlabelled), len(cut.scored))
    assert record.extra["labelled_images"] == len(cut.labelled) and record.budget == "10%"


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategies, expected",
    [
        (
            "[source_only, dann]",
            "tiny: strategies.dann: strategy 'dann' does not support protocol 'finetune' (it supports "
            "uda); strategies that support finetune: ",
        ),
        ("[mmd]", "strategy 'mmd' does not support protocol 'finetune'"),
        ("[kd]", "strategies.kd.params.teacher_strategy: strategy 'dann' does not support protocol 'finetune'"),
    ],
)
def test_an_unsupported_strategy_and_protocol_is_one_line(capsys, tmp_path, strategies, expected):
    assert main(["run", str(_suite(tmp_path, strategies=strategies)), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    if "support finetune" in expected:
        assert err[0].endswith("bitfit, dlr, freeze, kd, lora, self_training, source_only, unfreeze")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("protocol: finetune\n", ""), "tasks: applies to protocol finetune only"),
        (lambda t: t.replace("tasks: [digits]", "pairs: [digits->digits+invert]"), "tasks: required key is missing"),
        (lambda t: t + "pairs: [digits->digits+invert]\n", "pairs: protocol finetune names tasks, not pairs"),
        (lambda t: t.replace("[10%, 100%]", "[10%, 10 %]"), "budgets: Value error, listed twice: 10%"),
        (lambda t: t.replace("[10%, 100%]", "[half]"), "budget 'half': write a share"),
        (lambda t: t.replace("tasks: [digits]", "tasks: [nope]"), "dataset 'sklearn_digits' has no domain 'nope'"),
        (
            lambda t: t.replace("[10%, 100%]", "[200-shot]"),
            "budget 200-shot: class 0 has 125 image(s), fewer than the 200 asked for",
        ),
    ],
)
def test_bad_finetune_suites_are_one_line(capsys, tmp_path, edit, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(FINETUNE))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_uda_cell_ids_carry_no_finetune_keys_and_finetune_ids_do(tmp_path):
    registry = Registry()
    uda = plan(load_suite(_suite(tmp_path, TINY_SUITE)), registry).cells
    assert not {"protocol", "budget", "score_on", "test_split"} & set(uda[0].config())
    ft = plan(load_suite(_suite(tmp_path)), registry).cells
    assert [(c.protocol, c.task, c.budget, c.pair) for c in ft] == [
        ("finetune", "digits", "10%", "digits 10%"),
        ("finetune", "digits", "100%", "digits 100%"),
    ]
    assert len({c.id for c in ft}) == 2 and ft[0].config()["budget"] == "10%"


def test_tasks_flag_narrows_a_finetune_suite_and_is_refused_by_a_uda_one(tmp_path, capsys):
    text = FINETUNE.replace("tasks: [digits]", "tasks: [digits, digits+invert]")
    cells = plan(load_suite(_suite(tmp_path, text), tasks=["digits+invert"]), Registry()).cells
    assert {c.task for c in cells} == {"digits+invert"} and len(cells) == 2
    uda = tmp_path / "uda.yaml"
    uda.write_text(TINY_SUITE)
    assert main(["run", str(uda), "--tasks", "digits", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tasks digits" in err[0] and "protocol finetune only" in err[0], err


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    out = root / "out"
    code = main(["run", str(_suite(root, strategies=SUPPORTING)), "--out", str(out), "--quiet"])
    return out, code


@pytest.mark.slow
def test_every_supporting_strategy_runs_end_to_end_in_a_tiny_finetune_suite(finetune_run):
    out, code = finetune_run
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["strategy"], r["budget"]) for r in records} == {
        (s, b) for s in ("source_only", "freeze", "unfreeze", "dlr", "self_training", "kd") for b in ("10%", "100%")
    }
    assert all(r["status"] == "ok" and r["protocol"] == "finetune" and r["task"] == "digits" for r in records)
    test_size = sum(min(max(round(TEST_FRACTION * n), 1), n - 1) for n in np.bincount(_digits_labels()))
    assert {(r["train_images"], r["test_images"]) for r in records} == {(1797 - test_size, test_size)}
    assert len(records) == 12  # kd's teachers are the source_only cells of the same task, budget and seed
    header = (out / "leaderboard.md").read_text()
    assert "**Protocol:** fine-tuning on a labelled task" in header
    assert "digits 10% |" in header and "digits 100% |" in header
    assert (out / "accuracy_vs_eval_throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "suite.json").read_text())["pairs"] == ["digits 10%", "digits 100%"]


def _digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target
