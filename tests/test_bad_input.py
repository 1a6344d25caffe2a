"""Bad input through the command line: one line on stderr naming what is wrong and what would be
valid, exit code 2, no traceback (unless --debug), and nothing trained or written.

The unit tests of suite.py, cells.py and the datasets check the messages at their source; these
check what a user sees from ``tlbench run``, including problems only found by decoding the data
(a corrupt image, an empty domain), which must surface before the first cell trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)
from PIL import Image

from tlbench.cli import main
from tlbench.errors import UserError

IMAGE_SUITE = """\
name: folders
dataset: image_folder
dataset_options: {{path: {path}{extra}}}
pairs: [{pair}]
backbones:
  - name: test_efficientnet
    weights: random
strategies: [source_only]
recipe: {{steps: 2, batch_size: 4, image_size: 8, resize_size: 8, hflip: false, log_every: 1,
          timing_warmup_steps: 0, source_holdout: 0}}
"""


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)


def make_folders(root: Path, domains: dict[str, list[str]], per_class: int = 3) -> Path:
    """``root/<domain>/<class>/imgN.png``: a tiny image_folder dataset."""
    seed = 0
    for domain, classes in domains.items():
        for cls in classes:
            for i in range(per_class):
                seed += 1
                _image(root / domain / cls / f"img{i}.png", seed)
    return root


def folder_suite(tmp_path: Path, data: Path, pair: str = "src->tgt", extra: str = "") -> Path:
    path = tmp_path / "folders.yaml"
    path.write_text(IMAGE_SUITE.format(path=data, extra=extra, pair=pair))
    return path


def tiny(tmp_path: Path, text: str = TINY_SUITE) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def run_bad(capsys, tmp_path: Path, suite: Path, *extra: str) -> str:
    """Run ``tlbench run`` expecting bad input; return the one error line (checked)."""
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--quiet", *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1, lines
    assert lines[0].startswith("tlbench: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    assert not (out / "cells").exists(), "a cell was run despite bad input"
    assert not (out / "results.csv").exists()
    return lines[0]


# -- the suite file ---------------------------------------------------------------------------------
def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    line = run_bad(
        capsys,
        tmp_path,
        tiny(tmp_path, TINY_SUITE.replace("pairs: [digits->digits+invert]", "pairs: [digits->digits+invert")),
    )
    assert "tiny.yaml:4:" in line and "malformed YAML" in line


def test_unknown_key_lists_valid_keys(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("  steps: 6", "  stepz: 6")))
    assert "tiny.yaml: recipe.stepz: unknown key; valid keys here: steps, batch_size" in line


def test_wrong_type_names_key_and_value(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("batch_size: 8", "batch_size: many")))
    assert "tiny.yaml: recipe.batch_size:" in line and "valid integer" in line and "'many'" in line


def test_value_out_of_range(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--set", "recipe.image_size=4")
    assert "recipe.image_size: Input should be greater than or equal to 8 (got 4)" in line


def test_missing_suite_file(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tmp_path / "absent.yaml")
    assert "absent.yaml: no such suite file" in line


# -- labels: a row of every report, so printable text on one line --------------------------------------
@pytest.mark.parametrize(
    "entry, key, expected",
    [
        ('strategies: [{name: source_only, label: "a\\0b"}]', "strategies.0.label", "control character U+0000"),
        ('strategies: [{name: source_only, label: "a\\nb"}]', "strategies.0.label", "control character U+000A"),
        ('strategies: [{name: source_only, label: "a\\tb"}]', "strategies.0.label", "control character U+0009"),
        ('strategies: [{name: source_only, label: "a\\u2028b"}]', "strategies.0.label", "control character U+2028"),
        (
            "strategies: [{name: source_only, label: " + "x" * 201 + "}]",
            "strategies.0.label",
            "the label is 201 characters long; at most 200 are allowed",
        ),
        (
            'backbones: [{name: test_efficientnet, weights: random, label: "net\\0"}]',
            "backbones.0.label",
            "control character U+0000",
        ),
        (
            "backbones: [{name: test_efficientnet, weights: random, label: " + "y" * 10_000 + "}]",
            "backbones.0.label",
            "the label is 10000 characters long",
        ),
    ],
    ids=["nul", "newline", "tab", "line-separator", "long", "backbone-nul", "backbone-10000"],
)
def test_a_label_with_control_characters_or_too_long_is_one_line(capsys, tmp_path, entry, key, expected):
    text = TINY_SUITE.replace("strategies: [source_only, dann]", "")
    if entry.startswith("backbones"):
        text = text.replace("backbones:\n  - name: test_efficientnet\n    weights: random\n", "")
        text += "strategies: [source_only]\n"
    text += entry + "\n"
    line = run_bad(capsys, tmp_path, tiny(tmp_path, text))
    assert f"tiny.yaml: {key}: " in line and expected in line
    assert len(line) < 500  # a 10,000-character label is not repeated whole


def test_a_plain_label_of_200_characters_with_unicode_is_fine(capsys, tmp_path):
    text = TINY_SUITE.replace(
        "strategies: [source_only, dann]", "strategies: [{name: source_only, label: 'é→ " + "z" * 197 + "'}]"
    )
    code = main(["run", str(tiny(tmp_path, text)), "--out", str(tmp_path / "out"), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--strategies", "dnan"], "unknown strategy 'dnan'; did you mean dann, cdan?"),
        (
            ["--backbones", "test_efficientnett"],
            "unknown backbone 'test_efficientnett'; did you mean test_efficientnet",
        ),
        (["--pairs", "digits->digits+invret"], "unknown shift 'invret'; did you mean invert?"),
        (["--launcher", "locl"], "unknown launcher 'locl'; did you mean local?"),
    ],
)
def test_unknown_names_suggest_close_ones(capsys, tmp_path, args, expected):
    assert expected in run_bad(capsys, tmp_path, tiny(tmp_path), *args)


def test_unknown_dataset(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("sklearn_digits", "sklearn_digit")))
    assert line.endswith("unknown dataset 'sklearn_digit'; did you mean sklearn_digits?")


@pytest.mark.parametrize(
    "pair, expected",
    [
        ("digits=>digits+invert", "bad pair 'digits=>digits+invert': write SOURCE->TARGET"),
        ("mnist->digits", "dataset 'sklearn_digits' has no domain 'mnist'; valid: digits"),
        ("digits->digits", "pair 'digits->digits': source and target are the same domain (digits)"),
        ("digits->digits+rotate:9", "severity 9 of 'rotate' is out of range 1-5"),
    ],
)
def test_bad_pairs(capsys, tmp_path, pair, expected):
    assert expected in run_bad(capsys, tmp_path, tiny(tmp_path), "--pairs", pair)


# -- the data ---------------------------------------------------------------------------------------
def test_missing_data_root_shows_the_expected_layout(capsys, tmp_path):
    suite = tiny(
        tmp_path, TINY_SUITE.replace("sklearn_digits", "office31").replace("[digits->digits+invert]", "[A->W]")
    )
    line = run_bad(capsys, tmp_path, suite, "--data-root", str(tmp_path / "nowhere"))
    assert "dataset 'office31' not found: looked for " + str(tmp_path / "nowhere" / "office31") in line
    assert "expected layout <office31>/{amazon,dslr,webcam}/[images/]<class>/*.jpg" in line


def test_missing_domain_folder_shows_the_expected_layout(capsys, tmp_path):
    make_folders(tmp_path / "root" / "office31", {"amazon": ["bike"], "webcam": ["bike"]}, per_class=1)
    suite = tiny(
        tmp_path, TINY_SUITE.replace("sklearn_digits", "office31").replace("[digits->digits+invert]", "[A->W]")
    )
    line = run_bad(capsys, tmp_path, suite, "--data-root", str(tmp_path / "root"))
    base = tmp_path / "root" / "office31"
    assert f"domain 'dslr' not found in {base}; expected {base}/dslr/[images/]<class>/<image>" in line


def test_domain_without_images(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    for f in (data / "tgt" / "b").iterdir():
        f.unlink()
    for f in (data / "tgt" / "a").iterdir():
        f.unlink()
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert f"domain 'tgt' has no images in {data / 'tgt'}" in line and "<class>/<image>" in line


def test_class_missing_from_one_domain_is_named(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b", "c"], "tgt": ["a", "c"]})
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert "class 'b' (in src) is missing from domain 'tgt'" in line


def test_corrupt_image_in_the_target_stops_before_any_cell_trains(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    bad = data / "tgt" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # Two pairs: the corrupt file is only in the second pair's target, yet nothing trains.
    suite = folder_suite(tmp_path, data, pair="src->tgt+invert, tgt->src")
    line = run_bad(capsys, tmp_path, suite)
    assert str(bad) in line and "cannot read image" in line and "on_bad_image: skip" in line


def test_corrupt_image_skipped_with_a_warning_when_the_suite_says_so(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    bad = data / "tgt" / "a" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["run", str(folder_suite(tmp_path, data, extra=", on_bad_image: skip")), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured
    warnings_ = [w for w in captured.err.splitlines() if w.startswith("tlbench: warning:")]
    assert len(warnings_) == 1 and "domain 'tgt': 1 unreadable image(s) skipped" in warnings_[0]
    assert str(bad) in warnings_[0]
    import json

    (record,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*/record.json")]
    assert record["status"] == "ok" and record["extra"]["target_images"] == 6  # 2 classes x 3, broken left out


def test_bad_dataset_option_value(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a"], "tgt": ["a"]}, per_class=1)
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data, extra=", on_bad_image: ignore"))
    assert "on_bad_image must be 'error' or 'skip', got 'ignore'" in line


# -- weights ----------------------------------------------------------------------------------------
def test_weights_file_that_does_not_exist(capsys, tmp_path):
    missing = tmp_path / "nope.pth"
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("weights: random", f"weights: {missing}")))
    assert f"backbone 'test_efficientnet': weights file {missing} does not exist" in line
    assert "random" in line and "local_file" in line  # says what would be valid


def test_weights_file_that_is_corrupt_is_found_before_training(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("weights: random", f"weights: {bad}")))
    assert f"cannot load weights file {bad}" in line


# -- environment variables ----------------------------------------------------------------------------
MEMORY_CACHE_ERROR = (
    "tlbench: error: TLBENCH_MEMORY_CACHE_MB={value!r} is not a number of megabytes; set it to 0 or more (e.g. "
    "2048; 0 keeps no decoded domain in memory) or unset it for the default, 4096"
)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e400"])
def test_a_bad_memory_cache_size_is_one_line_naming_the_variable(capsys, tmp_path, monkeypatch, value):
    monkeypatch.setenv("TLBENCH_MEMORY_CACHE_MB", value)
    assert run_bad(capsys, tmp_path, tiny(tmp_path)) == MEMORY_CACHE_ERROR.format(value=value)


def test_a_bad_memory_cache_size_stops_data_prepare_in_one_line(capsys, tmp_path, monkeypatch):
    from tlbench.data.cache import clear_memory_cache

    clear_memory_cache()  # this process starts with no domain in memory, as the command does
    monkeypatch.setenv("TLBENCH_MEMORY_CACHE_MB", "abc")
    code = main(["data", "prepare", str(tiny(tmp_path)), "--cache", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 2 and captured.err == MEMORY_CACHE_ERROR.format(value="abc") + "\n"
    assert "Traceback" not in captured.err + captured.out


def test_a_memory_cache_size_in_megabytes_is_kept(monkeypatch):
    from tlbench.data.cache import DEFAULT_MEMORY_BYTES, memory_cache_bytes

    for value, expected in [("", DEFAULT_MEMORY_BYTES), ("0", 0), ("1.5", 3 << 19), (" 2048 ", 2048 << 20)]:
        monkeypatch.setenv("TLBENCH_MEMORY_CACHE_MB", value)
        assert memory_cache_bytes() == expected


# -- --debug ----------------------------------------------------------------------------------------
def test_debug_raises_with_the_traceback(tmp_path):
    with pytest.raises(UserError, match="unknown strategy 'dnan'"):
        main(["--debug", "run", str(tiny(tmp_path)), "--out", str(tmp_path / "o"), "--strategies", "dnan"])


@pytest.mark.slow
def test_debug_prints_a_traceback_from_the_real_command(tmp_path):
    suite = tiny(tmp_path, TINY_SUITE.replace("  steps: 6", "  stepz: 6"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    debug = subprocess.run(
        [sys.executable, "-m", "tlbench", "--debug", "run", str(suite), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "tlbench.errors.UserError: " + f"{suite}: recipe.stepz: unknown key" in debug.stderr


# -- YAML's own surprises -----------------------------------------------------------------------------
def test_unquoted_on_off_mean_the_words_not_booleans(tmp_path):
    from tlbench.spec.loading import load_suite

    # YAML 1.1 reads `channels_last: off` as false; the valid values are the words auto/on/off
    suite = load_suite(tiny(tmp_path, TINY_SUITE + "  channels_last: off\n"))
    assert suite.recipe.channels_last == "off"
    assert load_suite(tiny(tmp_path), overrides=["recipe.channels_last=on"]).recipe.channels_last == "on"
