"""Suite validation: every problem is one line naming the file and key path."""

from __future__ import annotations

import pytest

from tlbench.errors import UserError
from tlbench.spec.loading import apply_override, load_suite

BASE = """\
name: s
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones: [test_efficientnet]
strategies:
  - source_only
  - dann: {trade_off: 0.5}
  - name: mmd
    params: {trade_off: 2.0}
"""


def write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_valid_suite_with_all_strategy_forms(tmp_path):
    suite = load_suite(write(tmp_path, BASE))
    assert [s.name for s in suite.strategies] == ["source_only", "dann", "mmd"]
    assert suite.strategies[1].params == {"trade_off": 0.5}
    assert suite.strategies[2].params == {"trade_off": 2.0}
    assert suite.backbones[0].weights == "auto"
    assert suite.recipe.steps == 1000 and suite.recipe.stored_size == 256


def test_unknown_key_names_path_and_valid_keys(tmp_path):
    with pytest.raises(UserError) as e:
        load_suite(write(tmp_path, BASE + "recipe:\n  stepz: 3\n"))
    msg = str(e.value)
    assert "s.yaml: recipe.stepz: unknown key" in msg and "steps" in msg
    assert "\n" not in msg


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(UserError, match=r"recipe\.steps: .*greater than or equal to 1 \(got -5\)"):
        load_suite(write(tmp_path, BASE + "recipe:\n  steps: -5\n"))
    with pytest.raises(UserError, match=r"recipe\.lr: .*valid number.*'fast'"):
        load_suite(write(tmp_path, BASE + "recipe:\n  lr: fast\n"))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"s\.yaml:4:\d+: malformed YAML: expected"):
        load_suite(write(tmp_path, "name: s\ndataset: x\npairs: [a->b\nbackbones: []\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(UserError, match=r"s\.yaml: dataset: required key is missing"):
        load_suite(write(tmp_path, "name: s\npairs: all\nbackbones: [a]\nstrategies: [b]\n"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="must be a mapping"):
        load_suite(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_overrides_and_narrowing(tmp_path):
    suite = load_suite(
        write(tmp_path, BASE),
        overrides=["recipe.steps=7", "recipe.lr=0.5", "seeds=[1, 2]"],
        strategies=["dann", "freeze"],
        pairs=["digits->digits+rotate:2"],
    )
    assert suite.recipe.steps == 7 and suite.recipe.lr == 0.5 and suite.seeds == [1, 2]
    assert [s.name for s in suite.strategies] == ["dann", "freeze"]
    assert suite.strategies[0].params == {"trade_off": 0.5}  # kept from the suite
    assert suite.pairs == ["digits->digits+rotate:2"]


def test_override_errors():
    with pytest.raises(UserError, match="expected key.path=value"):
        apply_override({}, "recipe.steps")
    with pytest.raises(UserError, match="'name' is not a mapping"):
        apply_override({"name": "x"}, "name.sub=1")


def test_override_validated(tmp_path):
    with pytest.raises(UserError, match=r"recipe\.image_size"):
        load_suite(write(tmp_path, BASE), overrides=["recipe.image_size=2"])


def test_duplicate_seeds_rejected(tmp_path):
    with pytest.raises(UserError, match=r"seeds: .*listed twice: 1"):
        load_suite(write(tmp_path, BASE + "seeds: [1, 1]\n"))


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_DATA_ROOT", "/some/where")
    assert load_suite(write(tmp_path, BASE)).data_root == "/some/where"
    assert load_suite(write(tmp_path, BASE), data_root="/cli").data_root == "/cli"
