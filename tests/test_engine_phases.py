"""Each phase of the engine on its own: setup, schedule, batch source, step loop and observers,
evaluation, record; and ``train_cell`` as the sum of them."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)
from torch import nn

from tlbench.errors import DivergedError, UserError
from tlbench.plugins.registry import get_registry
from tlbench.spec.cell import CellTask
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.spec.recipe import Recipe
from tlbench.training.augment import Augmenter, FixedViews, Normalizer
from tlbench.training.batches import BatchSource, DomainImages
from tlbench.training.curves import CurveRecorder
from tlbench.training.engine import train_cell
from tlbench.training.evaluation import PseudoLabelAudit, evaluate
from tlbench.training.frozen import FrozenOutputs
from tlbench.training.loop import NonFiniteCheck, StepObserver, run_steps
from tlbench.training.measure import Stopwatch
from tlbench.training.schedule import ParamSchedule
from tlbench.training.setup import set_up_cell
from tlbench.training.strategy import Batch, ParamGroup, StepContext, StepOutput, Strategy, Update

RECIPE = Recipe(
    steps=10,
    lr=0.1,
    lr_gamma=0.0,
    lr_decay=0.75,
    optimizer="sgd",
    momentum=0.0,
    nesterov=False,
    weight_decay=0.0,
    batch_size=4,
    source_sampling="shuffle",
)


def _task(tmp_path, strategies: str = "[source_only]", extra: str = "") -> CellTask:
    path = tmp_path / "suite.yaml"
    path.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", f"strategies: {strategies}") + extra)
    cells = plan(load_suite(path), get_registry()).cells
    return CellTask(
        cell=cells[0],
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        show_progress=False,
    )


def _augmenter(size: int = 8) -> Augmenter:
    return Augmenter(size, Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu")), hflip=False, scale=(0.5, 1.0))


# -- setup ---------------------------------------------------------------------------------------
def test_setup_splits_a_shared_base_domain_into_disjoint_halves_and_holds_out_source(tmp_path):
    setup = set_up_cell(_task(tmp_path), get_registry(), torch.device("cpu"))
    data = setup.data
    n_src, n_hold, n_tgt = len(data.source_train), len(data.source_holdout), len(data.target)
    assert n_src + n_hold + n_tgt == 1797  # sklearn's digits, each image on one side only
    assert n_hold == round(setup.recipe.source_holdout * (n_src + n_hold))
    assert data.num_classes == 10
    assert setup.schedule.optimizer.param_groups  # groups active at step 0 are in the optimizer


def test_a_shared_base_domain_is_split_class_by_class_with_every_class_on_both_sides(tmp_path):
    setup = set_up_cell(_task(tmp_path), get_registry(), torch.device("cpu"))
    data = setup.data
    source = torch.cat([data.source_train.labels, data.source_holdout.labels])
    src_counts = torch.bincount(source, minlength=10)
    tgt_counts = torch.bincount(data.target.labels, minlength=10)
    assert (src_counts > 0).all() and (tgt_counts > 0).all()
    assert ((src_counts - tgt_counts).abs() <= 1).all()  # half of every class on each side
    assert setup.cell.derived_pair and setup.cell.config()["derived_split"] == "stratified"


def test_stratified_split_is_deterministic_disjoint_and_exact_per_class():
    from tlbench.data.splits import stratified_split

    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2 + [3])
    first, second = stratified_split(labels, 0.3, seed=5)
    again, _ = stratified_split(labels, 0.3, seed=5)
    assert torch.equal(first, again)
    assert not set(first.tolist()) & set(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[first], minlength=4).tolist() == [3, 1, 1, 1]  # 2 and 1: never empty
    assert torch.bincount(labels[second], minlength=4).tolist() == [7, 2, 1, 0]
    assert not torch.equal(stratified_split(labels, 0.3, seed=6)[0], first)


def test_loading_weights_leaves_the_random_stream_as_the_backbone_left_it():
    """A weight source that draws random numbers (timm's renaming builds a model) or answers from a
    cache must not move the stream the head is initialised from: a cell in a fresh worker and one
    after a preflight in the same process start from the same head (issue 20)."""
    import types

    from tlbench import hookimpl
    from tlbench.models.weights import WeightSource, load_backbone
    from tlbench.plugins.registry import Registry

    class Drawing(WeightSource):
        name, priority = "drawing", 0

        def available(self, model_name, spec):
            return True

        def state_dict(self, model_name, spec):
            import timm  # renaming keys by building the model draws from the stream, as a cold cache does

            return timm.create_model(model_name, pretrained=False).state_dict()

    @hookimpl
    def register_weight_sources(register):
        register(Drawing)

    registry = Registry()
    registry.add_plugin("drawing_source", types.SimpleNamespace(register_weight_sources=register_weight_sources))
    torch.manual_seed(3)
    load_backbone("resnet18", "random", registry=registry)
    after_create = torch.get_rng_state()
    torch.manual_seed(3)
    _, used = load_backbone("resnet18", "drawing", registry=registry)
    assert used == "drawing"
    assert torch.equal(torch.get_rng_state(), after_create)


def test_setup_is_the_same_for_the_same_seed(tmp_path):
    a = set_up_cell(_task(tmp_path), get_registry(), torch.device("cpu"))
    b = set_up_cell(_task(tmp_path), get_registry(), torch.device("cpu"))
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.data.target.labels, b.data.target.labels)


# -- schedule ------------------------------------------------------------------------------------
def test_schedule_adds_a_group_at_its_start_step_and_decays_the_rate():
    early, late = nn.Linear(2, 2), nn.Linear(2, 2)
    groups = [ParamGroup("early", list(early.parameters())), ParamGroup("late", list(late.parameters()), start=0.5)]
    recipe = RECIPE.model_copy(update={"lr_gamma": 10.0})
    model = nn.Sequential(early, late)
    schedule = ParamSchedule(groups, [model], model, recipe, torch.device("cpu"), "probe")
    assert schedule.start_step[id(groups[1])] == 5
    assert all(not p.requires_grad for p in late.parameters())
    schedule.before_step(4)
    assert len(schedule.optimizer.param_groups) == 1
    schedule.before_step(5)
    assert len(schedule.optimizer.param_groups) == 2 and all(p.requires_grad for p in late.parameters())
    assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + 10 * 5 / 10) ** -0.75)
    assert schedule.trainable_params() == 12


def test_schedule_refuses_a_strategy_that_trains_nothing_at_step_0():
    layer = nn.Linear(2, 2)
    with pytest.raises(UserError, match="trains nothing at step 0"):
        ParamSchedule(
            [ParamGroup("late", list(layer.parameters()), start=0.5)],
            [layer],
            layer,
            RECIPE,
            torch.device("cpu"),
            "probe",
        )


def test_schedule_refuses_a_parameter_in_two_groups():
    layer = nn.Linear(2, 2)
    params = list(layer.parameters())
    with pytest.raises(ValueError, match="in two groups"):
        ParamSchedule(
            [ParamGroup("a", params), ParamGroup("b", params[:1])], [layer], layer, RECIPE, torch.device("cpu"), "probe"
        )


# -- batch source --------------------------------------------------------------------------------
def _source(frozen: FrozenOutputs, views=("weak", "strong"), n: int = 12) -> BatchSource:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (n, 3, 10, 10), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    return BatchSource.build(
        images, labels, images.clone(), frozen, target_views=views, augmenter=_augmenter(), recipe=RECIPE, g=g
    )


def test_batch_source_serves_features_while_the_backbone_is_frozen_then_images():
    feats = torch.randn(2, 12, 5)  # two views of 12 images, 5-d
    source = _source(
        FrozenOutputs(feature_steps=3, source_features=feats, target_features=feats.clone()), views=("weak",)
    )
    shapes = [tuple(source.batch(step).source.shape) for step in range(5)]
    assert shapes == [(4, 5)] * 3 + [(4, 3, 8, 8)] * 2
    assert source.source.features is None and source.target.features is None  # freed once images are served


def test_batch_source_serves_target_views_without_labels():
    batch = _source(FrozenOutputs()).batch(0)
    assert batch.target.shape == batch.target_strong.shape == (4, 3, 8, 8)
    assert batch.target_index.shape == (4,)
    assert not hasattr(batch, "target_labels")
    assert set(vars(batch)) == {
        "source",
        "source_labels",
        "target",
        "target_strong",
        "target_index",
        "source_teacher",
        "target_teacher",
    }


def test_batch_source_serves_the_teachers_logits_for_the_fixed_view_it_serves():
    n = 12
    views = FixedViews(
        torch.tensor([[0.0, 0.0, 9.0, 9.0]]).expand(2, n, 4).clone(), torch.zeros(2, n, dtype=torch.bool)
    )
    logits = torch.arange(2 * n, dtype=torch.float32).view(2, n, 1)
    source = _source(
        FrozenOutputs(teacher_views=2, source_teacher=(views, logits), target_teacher=(views, logits)), views=("weak",)
    )
    batch = source.batch(0)
    assert batch.source_teacher.shape == (4, 1)
    assert torch.all((batch.source_teacher.flatten() % n) < n)


def test_domain_images_without_frozen_outputs_is_an_augmented_view():
    images = torch.full((3, 3, 10, 10), 128, dtype=torch.uint8)
    x, logits = DomainImages(images, None, None).view(torch.tensor([0, 2]), _augmenter(), torch.Generator())
    assert logits is None
    torch.testing.assert_close(x, torch.full((2, 3, 8, 8), (128 - 127.5) / 63.75))


# -- loop and observers --------------------------------------------------------------------------
class _Constant(Strategy):
    """A 'strategy' whose loss is ``w²`` (or NaN from ``nan_at`` on): the loop's arithmetic by hand."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))
        self.nan_at = nan_at

    def training_step(self, batch, ctx):
        loss = self.w**2
        if self.nan_at is not None and ctx.step >= self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"w": self.w.detach().clone(), "host": 2.0})


class _Batches:
    images_per_step = 4

    def batch(self, step):
        return Batch(source=torch.zeros(1), source_labels=torch.zeros(1))


class _Log(StepObserver):
    def __init__(self):
        self.after, self.logged, self.closed = [], [], False

    def after_step(self, step, loss, out):
        self.after.append(step)

    def at_log_point(self, step, loss):
        self.logged.append(step)

    def close(self):
        self.closed = True


def _loop(strategy, observers, steps: int = 5, log_every: int = 2, recorder: list | None = None):
    """Run the loop; with ``recorder`` (a list), a CurveRecorder joins the observers and is put in it."""
    schedule = ParamSchedule(
        [ParamGroup("w", [strategy.w])],
        [strategy],
        strategy,
        RECIPE.model_copy(update={"steps": steps}),
        torch.device("cpu"),
        "probe",
    )
    if recorder is not None:
        recorder.append(CurveRecorder(schedule))
        observers = [*observers, recorder[0]]
    ctx = StepContext(step=0, total_steps=steps, model=None, device=torch.device("cpu"), num_classes=1)
    return run_steps(
        strategy,
        schedule,
        _Batches(),
        ctx,
        contextlib.nullcontext,
        observers,
        total_steps=steps,
        log_every=log_every,
        warmup_steps=1,
        device=torch.device("cpu"),
    )


def test_the_loop_steps_the_optimizer_and_calls_observers_at_the_right_steps():
    strategy, log, recorder = _Constant(), _Log(), []
    timing = _loop(strategy, [log], recorder=recorder)
    means = recorder[0]  # the record's metric means come from the curves' window sums
    assert log.after == [0, 1, 2, 3, 4] and log.logged == [1, 3, 4] and log.closed
    # SGD on w² with lr 0.1: w ← 0.8 w each step
    assert strategy.w.item() == pytest.approx(0.8**5)
    assert means.means(5) == {"w": pytest.approx(sum(0.8**k for k in range(5)) / 5), "host": 2.0}
    assert timing.measured_steps == 4 and timing.images_per_step == 4


def test_a_non_finite_loss_raises_at_the_next_logging_point_naming_its_step():
    log = _Log()
    with pytest.raises(DivergedError) as err:
        _loop(_Constant(nan_at=2), [NonFiniteCheck(torch.device("cpu")), log], steps=8, log_every=3)
    assert err.value.step == 2
    assert log.after == [0, 1, 2] and log.closed  # stopped at the logging point right after step 2


class _TwoPlayers(Strategy):
    """Two updates a step, each over its own group: ``a`` minimises a² + b², then ``b`` minimises (b - a)²."""

    def __init__(self, second_groups: tuple[str, ...] = ("b",)):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(1.0))
        self.second_groups = second_groups

    def training_updates(self, batch, ctx):
        yield Update("first", self.a**2 + self.b**2, ("a",), {"a_seen": self.a.detach().clone()})
        yield Update("second", (self.b - self.a) ** 2, self.second_groups, {"a_seen_second": self.a.detach().clone()})


def _two_player_step(strategy: _TwoPlayers, observers: list[StepObserver]):
    schedule = ParamSchedule(
        [ParamGroup("a", [strategy.a]), ParamGroup("b", [strategy.b])],
        [strategy],
        strategy,
        RECIPE.model_copy(update={"steps": 1}),
        torch.device("cpu"),
        "two_players",
    )
    ctx = StepContext(step=0, total_steps=1, model=None, device=torch.device("cpu"), num_classes=1)
    return run_steps(
        strategy,
        schedule,
        _Batches(),
        ctx,
        contextlib.nullcontext,
        observers,
        total_steps=1,
        log_every=1,
        warmup_steps=0,
        device=torch.device("cpu"),
    )


class _Outputs(StepObserver):
    def __init__(self):
        self.seen = []

    def after_step(self, step, loss, out):
        self.seen.append((loss.item(), {k: float(v) for k, v in out.metrics.items()}))


def test_each_update_of_a_step_moves_only_its_groups_and_the_next_sees_the_move():
    strategy, outputs = _TwoPlayers(), _Outputs()
    _two_player_step(strategy, [outputs])
    # SGD, lr 0.1: update 1 moves a only: a = 1 - 0.1 * 2a = 0.8 (b's gradient 2b is dropped);
    # update 2 is computed on a = 0.8 and moves b only: b = 1 - 0.1 * 2(b - a) = 0.96 (a's -0.4 dropped)
    assert strategy.a.item() == pytest.approx(0.8) and strategy.b.item() == pytest.approx(0.96)
    loss, metrics = outputs.seen[0]
    assert loss == pytest.approx(2.0 + 0.2**2)  # observers see the sum of the updates' losses
    assert metrics == pytest.approx({"a_seen": 1.0, "a_seen_second": 0.8, "loss/first": 2.0, "loss/second": 0.04})


def test_an_update_naming_an_undeclared_group_says_which_groups_exist():
    with pytest.raises(
        ValueError, match=r"names group\(s\) 'c' that param_groups does not declare; declared: 'a', 'b'"
    ):
        _two_player_step(_TwoPlayers(second_groups=("c",)), [])


# -- evaluation ----------------------------------------------------------------------------------
class _ByBrightness(nn.Module):
    """Class 1 for bright images, 0 for dark ones."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)


def test_evaluate_counts_correct_predictions_over_every_batch():
    images = torch.cat([torch.zeros(3, 3, 10, 10), torch.full((3, 3, 10, 10), 255.0)]).to(torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 1, 0])  # two of six are wrong
    acc, img_per_s = evaluate(
        _ByBrightness(), images, labels, _augmenter(), 4, torch.device("cpu"), contextlib.nullcontext
    )
    assert acc == pytest.approx(100 * 4 / 6) and img_per_s > 0


def test_the_pseudo_label_audit_measures_only_kept_labels():
    audit = PseudoLabelAudit(torch.tensor([0, 1, 2, 3]))
    audit(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 2]), torch.tensor([1, 1, 0]))
    assert audit.metrics() == {"pseudo_label_coverage": pytest.approx(200 / 3), "pseudo_label_acc": 50.0}
    assert PseudoLabelAudit(torch.tensor([0])).metrics() == {}


def test_stopwatch_measures_elapsed_time():
    watch = Stopwatch(torch.device("cpu"))
    watch.start()
    assert 0 <= watch.stop() < 60


# -- the whole cell ------------------------------------------------------------------------------
def test_train_cell_records_what_its_phases_produced(tmp_path):
    task = _task(tmp_path)
    record = train_cell(task, get_registry())
    assert record.status == "ok" and record.cell_id == task.cell.id
    assert record.steps == 6 and 0 <= record.target_acc <= 100 and 0 <= record.source_acc <= 100
    assert record.extra["train_images"] + record.extra["target_images"] < 1797
    assert {"source_ce", "source_acc"} <= set(record.extra)  # the strategy's metrics, averaged
    assert math.isfinite(record.train_img_per_s) and record.trainable_params > 0
    prov = record.extra["provenance"]
    import tlbench_builtins.strategies.source_only as module
    from tlbench.plugins.provenance import source_digest

    assert prov["strategy"]["plugin"] == "strategies.source_only" and prov["strategy"]["distribution"] == "tlbench"
    assert prov["strategy"]["source_sha256"] == source_digest(module.SourceOnly) != ""
    assert set(prov["shifts"]) == {"invert"} and prov["dataset"]["plugin"] == "datasets.sklearn_digits"
    assert "threads)" in record.device and record.device.startswith("cpu (")
    again = train_cell(task, get_registry())
    assert (again.target_acc, again.source_acc) == (record.target_acc, record.source_acc)
