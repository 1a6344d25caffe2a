"""Backbones as plugins: providers are listed and train, digit networks drive unfreeze/dlr by their
stages, grey networks read colour domains, and weights: auto on a from-scratch network is an error."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from tlbench import WeightsUnavailableError
from tlbench.errors import UserError
from tlbench.models.backbones import find_provider
from tlbench.models.weights import load_backbone
from tlbench.plugins.registry import Registry, get_registry, set_registry
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.testing import apply_engine_trainability, check_backbone, run_cli
from tlbench.training.augment import Normalizer
from tlbench_builtins.backbones import digits, timm_models
from tlbench_builtins.backbones.digits import DigitNetworks
from tlbench_builtins.strategies.dlr import DiscriminativeLR
from tlbench_builtins.strategies.unfreeze import Unfreeze

GREY_SUITE = """\
name: grey
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones: [{name: grey_cnn, weights: random}]
strategies: [source_only, dann]
recipe: {steps: 8, batch_size: 8, image_size: 16, resize_size: 16, train_crop: none, hflip: false,
         backbone_lr_scale: 1.0, log_every: 4, timing_warmup_steps: 1}
"""


@pytest.fixture
def registry() -> Registry:
    return Registry(entry_points=False, plugins={"digits": digits, "timm_models": timm_models})


@pytest.fixture
def grey_plugin(monkeypatch):
    """The test's provider, named in $TLBENCH_PLUGINS after whatever the environment names there."""
    named = [m for m in os.environ.get("TLBENCH_PLUGINS", "").split(",") if m]
    monkeypatch.setenv("TLBENCH_PLUGINS", ",".join([*named, "grey_backbone_plugin"]))
    yield
    monkeypatch.undo()
    set_registry(None)  # the next user of the process registry loads it without the test's plugin


# -- a provider from a test module ---------------------------------------------------------------------
def test_a_plugin_backbone_is_listed_with_its_provider(grey_plugin, capsys):
    assert run_cli(["list", "backbones", "grey*"]) == 0
    assert capsys.readouterr().out.split() == ["grey_cnn", "grey_nets"]
    assert run_cli(["list", "backbones", "lenet"]) == 0
    assert capsys.readouterr().out.split() == ["lenet", "digits"]


@pytest.mark.slow
def test_a_plugin_backbone_trains_and_the_record_says_random(grey_plugin, tmp_path):
    suite = tmp_path / "grey.yaml"
    suite.write_text(GREY_SUITE)
    out = tmp_path / "out"
    assert run_cli(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["strategy"]) == ["dann", "source_only"] and (df["status"] == "ok").all()
    assert (df["trainable_params"] > 0).all()
    for line in (out / "results.jsonl").read_text().splitlines():
        extra = json.loads(line)["extra"]
        assert extra["weights"] == "random" and extra["backbone_provider"] == "grey_nets"
        assert extra["in_chans"] == 1


def test_the_conformance_kit_accepts_the_plugin_and_the_built_ins():
    import grey_backbone_plugin

    check_backbone(grey_backbone_plugin.GreyNets)
    check_backbone(DigitNetworks)


def test_the_conformance_kit_names_a_parameter_left_out_of_the_stages():
    class Forgetful(DigitNetworks):
        """The digit networks with the last stage forgotten."""

        name = "forgetful"

        def create(self, name):
            made = super().create(name)
            made.stages = made.stages[:-1]
            return made

    with pytest.raises(AssertionError, match=r"stages leave out \['fc.1.weight', 'fc.1.bias'\]"):
        check_backbone(Forgetful, ["lenet"])


# -- the digit networks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, features, chans, size, stage_sizes",
    [
        ("lenet", 500, 1, 28, [2, 2, 2]),
        ("dann_mnist", 768, 3, 28, [2, 2]),
        ("dtn", 512, 3, 32, [4, 4, 4, 4]),
    ],
)
def test_digit_networks_have_the_papers_shapes(registry, name, features, chans, size, stage_sizes):
    made, used = load_backbone(name, "random", registry=registry)
    assert used == "random"
    assert (made.feature_dim, made.in_chans) == (features, chans)
    assert made.network.eval()(torch.zeros(2, chans, size, size)).shape == (2, features)
    assert [len(s) for s in made.stages] == stage_sizes


def test_lenet_has_the_adda_layer_sizes(registry):
    made, _ = load_backbone("lenet", "random", registry=registry)
    shapes = [tuple(p.shape) for p in made.network.parameters()]
    assert shapes == [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,)]


def _lenet_model(registry):
    from tlbench.spec.recipe import Recipe
    from tlbench.training.setup import build_model

    recipe = Recipe(bottleneck_dim=16, backbone_lr_scale=0.5)
    model, used, _ = build_model("lenet", "random", 10, recipe, registry)
    return model


def test_unfreeze_joins_lenets_stages_from_the_output_side(registry):
    model = _lenet_model(registry)
    conv1, conv2, fc = (list(m.parameters()) for m in model.backbone.children())
    groups = Unfreeze(Unfreeze.parse_params({"stages": 2, "at": 0.2, "until": 0.6})).param_groups(model)
    assert [(g.name, g.start, g.lr_scale) for g in groups] == [
        ("head", 0.0, 1.0),
        ("backbone.stage2", 0.2, 0.5),
        ("backbone.stage1", 0.6, 0.5),
    ]
    assert groups[1].params == fc and groups[2].params == conv2
    trainable = apply_engine_trainability([model], groups, step=7, total_steps=10)  # after both joined
    assert all(id(p) in trainable for p in fc + conv2)
    assert not any(p.requires_grad for p in conv1)  # the input-most stage never trains


def test_dlr_decays_lenets_learning_rate_stage_by_stage(registry):
    model = _lenet_model(registry)
    stages = [list(m.parameters()) for m in model.backbone.children()]
    groups = DiscriminativeLR(DiscriminativeLR.parse_params({"decay": 0.5})).param_groups(model)
    assert [(g.name, g.lr_scale) for g in groups] == [
        ("head", 1.0),
        ("backbone.stage2", 0.5),
        ("backbone.stage1", 0.25),
        ("backbone.stage0", 0.125),
    ]
    assert [g.params for g in groups[1:]] == stages[::-1]


# -- channels, sizes and weights --------------------------------------------------------------------------
def test_a_grey_network_reads_the_mean_of_the_three_stored_channels():
    images = torch.tensor([[[[30.0]], [[60.0]], [[240.0]]]])  # one 1x1 colour pixel
    grey = Normalizer((0.5,), (0.5,), "cpu", in_chans=1)(images)
    assert grey.shape == (1, 1, 1, 1)
    assert grey.item() == pytest.approx((110.0 - 127.5) / 127.5)
    colour = Normalizer((0.5,) * 3, (0.5,) * 3, "cpu")(images)
    assert colour.flatten().tolist() == pytest.approx([(v - 127.5) / 127.5 for v in (30.0, 60.0, 240.0)])


def _suite(tmp_path, backbone: str, **recipe) -> object:
    body = GREY_SUITE.replace("{name: grey_cnn, weights: random}", backbone)
    path = tmp_path / "s.yaml"
    path.write_text(body)
    return load_suite(path, overrides=[f"recipe.{k}={v}" for k, v in recipe.items()])


def test_weights_auto_on_a_network_without_pretrained_weights_is_one_clear_line(tmp_path, registry, capsys):
    suite = _suite(tmp_path, "{name: lenet}", image_size=28, resize_size=28)
    with pytest.raises(WeightsUnavailableError) as info:
        plan(suite, get_registry(), check_data=False)
    assert str(info.value) == (
        "backbone 'lenet' (provider 'digits') has no pretrained weights; set weights: random to train it from scratch"
    )
    path = tmp_path / "s.yaml"
    assert (
        run_cli(
            [
                "run",
                str(path),
                "--out",
                str(tmp_path / "o"),
                "--set",
                "recipe.image_size=28",
                "--set",
                "recipe.resize_size=28",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()  # warnings about other broken plugins may precede it
    assert [line for line in err if not line.startswith("tlbench: warning:")] == [f"tlbench: error: {info.value}"]


def test_weights_random_plans_and_a_wrong_size_says_which(tmp_path):
    cells = plan(
        _suite(tmp_path, "{name: lenet, weights: random}", image_size=28, resize_size=28),
        get_registry(),
        check_data=False,
    ).cells
    assert {c.weights for c in cells} == {"random"} and len(cells) == 2
    with pytest.raises(
        UserError,
        match=r"^backbone 'lenet' reads 28x28 images only; set recipe.image_size: 28 "
        r"\(it is 16\)$",
    ):
        plan(_suite(tmp_path, "{name: lenet, weights: random}"), get_registry(), check_data=False)


def test_an_unknown_backbone_gets_a_did_you_mean_across_providers(registry):
    with pytest.raises(UserError, match=r"^unknown backbone 'lenett'; did you mean lenet[,?]"):  # closest first
        find_provider("lenett", registry)
    assert find_provider("resnet18", registry).name == "timm"
