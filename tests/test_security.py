"""A suite is data, never code; files tlbench reads back cannot run code and are checked before
they are trusted; strings from data are escaped in the HTML report; tlbench writes only to its
output directory and its cache, and only reads the data root."""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)
from PIL import Image

from tlbench.cli import main
from tlbench.spec.store import ResultsDir

CODE_DIRS = [ROOT / "tlbench", ROOT / "plugins"]


# -- a suite is data ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"]
)
def test_python_tags_in_a_suite_are_rejected_and_never_run(tmp_path, capsys, tag):
    marker = tmp_path / "pwned"
    suite = tmp_path / "evil.yaml"
    arg = f'["touch {marker}"]' if "apply" in tag or "new" in tag else "''"
    suite.write_text(TINY_SUITE.replace("name: tiny", f"name: tiny\ndescription: {tag} {arg}"))
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"tlbench: error: {suite}:2:") and "malformed YAML" in lines[0]
    assert "constructor" in lines[0] and "Traceback" not in captured.err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_suite_plugin_names_are_names_never_import_paths(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [os.system]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert "unknown strategy 'os.system'" in capsys.readouterr().err
    # the modules that turn a suite into work never import or look up objects by a dotted path
    for path in (
        *sorted((ROOT / "tlbench" / "spec").glob("*.py")),
        ROOT / "tlbench" / "matrix" / "runner.py",
    ):
        tree = ast.parse(path.read_text())
        called = {_call_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not called & {"import_module", "__import__", "eval", "exec", "locate", "resolve_name"}, path


# -- deserialisation cannot run code ------------------------------------------------------------------
def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


@functools.lru_cache(maxsize=1)
def _all_calls() -> list[tuple[Path, ast.Call]]:
    """Every call in tlbench/ and plugins/, with its file."""
    return [
        (path, node)
        for folder in CODE_DIRS
        for path in sorted(folder.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call)
    ]


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call to ``<something>.name`` or ``name`` in tlbench/ and plugins/."""
    return [(path, node) for path, node in _all_calls() if _call_name(node) == name]


def _keyword_is(node: ast.Call, key: str, value: object) -> bool:
    return any(k.arg == key and isinstance(k.value, ast.Constant) and k.value.value is value for k in node.keywords)


def test_every_torch_load_is_weights_only():
    calls = [(p, n) for p, n in _calls("load") if _dotted(n.func) == "torch.load"]
    assert len(calls) >= 3  # checked files (domain and feature caches, teachers), weights files, efficientnet-lite
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n in calls if not _keyword_is(n, "weights_only", True)]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_every_np_load_refuses_pickles():
    calls = [(p, n) for p, n in _calls("load") if _dotted(n.func) in ("np.load", "numpy.load")]
    assert calls  # the npz dataset
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n in calls if not _keyword_is(n, "allow_pickle", False)]
    assert not bad, f"np.load without allow_pickle=False: {bad}"


def test_no_unsafe_loaders_anywhere():
    unsafe = []
    for name in ("load", "loads", "unsafe_load", "full_load", "Unpickler"):
        for path, node in _calls(name):
            dotted = _dotted(node.func)
            if dotted.startswith(("pickle.", "cPickle.", "dill.", "cloudpickle.", "marshal.", "joblib.")) or dotted in (
                "yaml.load",
                "yaml.unsafe_load",
                "yaml.full_load",
            ):
                unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno} {dotted}")
    for name in ("eval", "exec"):
        unsafe += [f"{p.relative_to(ROOT)}:{n.lineno} {name}" for p, n in _calls(name) if isinstance(n.func, ast.Name)]
    assert not unsafe, unsafe


# -- damaged files are detected and rebuilt -------------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 3]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_feature_cache_damage_is_detected_and_rebuilt(tmp_path, how):
    from tlbench.plugins.registry import get_registry
    from tlbench.spec.recipe import Recipe
    from tlbench.training.augment import Augmenter, Normalizer
    from tlbench.training.frozen import FeatureBank
    from tlbench.training.setup import build_model

    torch.manual_seed(0)
    model, _, _ = build_model(
        "test_efficientnet", "random", 10, Recipe(bottleneck_dim=0, backbone_lr_scale=0.1), get_registry()
    )
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    aug = Augmenter(16, Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu")), hflip=False, scale=(0.5, 1.0))
    images = torch.randint(0, 256, (6, 3, 18, 18), dtype=torch.uint8)
    bank = FeatureBank(model, aug, ["center"], batch_size=4, cache_dir=tmp_path, key="k")

    first = bank.features(images, "dom", contextlib.nullcontext)
    assert len(calls) == 2  # two batches computed
    (cached,) = (tmp_path / "features").glob("*.pt")
    assert torch.equal(bank.features(images, "dom", contextlib.nullcontext), first) and len(calls) == 2

    _damage(cached, how)
    with pytest.warns(UserWarning, match="unusable.*rebuilding it"):
        again = bank.features(images, "dom", contextlib.nullcontext)
    assert len(calls) == 4 and torch.equal(again, first)  # recomputed, not read from the damaged file
    assert torch.equal(bank.features(images, "dom", contextlib.nullcontext), first) and len(calls) == 4


KD_SUITE = (
    TINY_SUITE.replace(
        "strategies: [source_only, dann]", "strategies:\n  - kd: {teacher_strategy: source_only}"
    ).replace("  steps: 6", "  steps: 2")
    + "reports: [csv]\n"
)


def test_damaged_teacher_weights_are_never_loaded_and_the_teacher_is_retrained(tmp_path, capsys):
    from tlbench.data.files import checked_file_ok, load_checked

    suite = tmp_path / "kd.yaml"
    suite.write_text(KD_SUITE)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert "2 cells: 2 run" in capsys.readouterr().out
    results = ResultsDir(out)
    (teacher_model,) = (out / "cells").glob("*/model.pt")
    teacher_id = teacher_model.parent.name
    student_id = next(r.cell_id for r in results.records() if r.cell_id != teacher_id)
    assert checked_file_ok(teacher_model) and isinstance(load_checked(teacher_model), dict)

    _damage(teacher_model, "flip")
    assert not checked_file_ok(teacher_model)
    with pytest.warns(UserWarning, match="unusable"):
        assert load_checked(teacher_model) is None
    results.record_path(student_id).unlink()  # the student has yet to run
    teacher_record = results.record_path(teacher_id).read_bytes()

    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert "2 cells: 2 run, 0 already done, 0 failed" in capsys.readouterr().out
    assert checked_file_ok(teacher_model)  # retrained and written whole again
    assert results.record_path(teacher_id).read_bytes() != teacher_record  # a new record (new start time)
    assert results.read_record(student_id).status == "ok"


# -- the HTML report escapes every string that comes from data --------------------------------------
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_suite_name_references_and_environment(tmp_path):
    from test_leaderboard import make_records

    from tlbench.plugins.registry import get_registry
    from tlbench.reporting.write import write_reports

    evil = '<img src=x onerror=alert(1)>"&'
    records = make_records()
    for r in records:
        r.device = f"cpu {evil}"
        r.torch_version = "2 <script>alert(2)</script>"
    suite = {
        "name": f"n{evil}",
        "dataset": f"d{evil}",
        "description": f"desc{evil}",
        "reference": [{"backbone": f"b{evil}", "strategy": f"s{evil}", "source": f"c{evil}", "acc": {"A->W": 1.0}}],
    }
    write_reports(tmp_path, records, suite, ["html"], registry=get_registry())
    text = (tmp_path / "leaderboard.html").read_text()
    page = _Tags()
    page.feed(text)
    assert [t for t, _ in page.tags if t == "img"] == []
    assert [t for t, _ in page.tags if t == "script"] == ["script"]  # only the page's own sorter
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    body = "".join(page.text)
    for s in (f"n{evil}", f"b{evil}", f"s{evil}", f"c{evil}", "2 <script>alert(2)</script>"):
        assert s in body, s


# -- writes only to the output directory and the cache; the data root is only read ---------------------
def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def _make_dataset(root: Path) -> None:
    seed = 0
    for domain in ("photo", "sketch"):
        for cls in ("cat", "dog"):
            for i in range(3):
                seed += 1
                path = root / domain / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), np.uint8)).save(path)


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [*root.rglob("*"), root]:
        if p.is_dir():
            p.chmod(0o755 if writable else 0o555)
        else:
            p.chmod(0o644 if writable else 0o444)


@pytest.mark.slow
def test_a_run_writes_only_to_its_output_dir_and_cache(tmp_path):
    cwd, home, cache, tmp, data, suites = (tmp_path / n for n in ("cwd", "home", "cache", "tmp", "data", "suites"))
    for d in (cwd, home, cache, tmp, suites):
        d.mkdir()
    _make_dataset(data / "mine")
    suite = suites / "s.yaml"
    suite.write_text(f"""\
name: readonly
dataset: image_folder
dataset_options: {{path: mine}}
data_root: {data}
pairs: [photo->sketch, sketch->photo+invert]
backbones: [{{name: test_efficientnet, weights: random}}]
strategies: [source_only, freeze]
recipe: {{steps: 2, batch_size: 4, image_size: 8, resize_size: 10, hflip: false, log_every: 1,
          timing_warmup_steps: 0, eval_batch_size: 64}}
""")
    _chmod_tree(data, writable=False)
    before = {d: _tree(d) for d in (data, suites, home, cwd, tmp)}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "MPLCONFIGDIR", "TORCH_HOME", "HF_", "TLBENCH_"))
    }
    env.update(
        HOME=str(home),
        TLBENCH_CACHE=str(cache),
        TMPDIR=str(tmp),
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tlbench", "run", str(suite), "--out", "out", "--quiet"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        _chmod_tree(data, writable=True)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(cwd / "out" / "results.csv")) == 4

    assert _tree(data) == before[data], "the data root was modified"
    assert _tree(suites) == before[suites]
    assert _tree(home) == {}, f"written under HOME: {sorted(_tree(home))}"
    assert _tree(tmp) == {}, f"left in TMPDIR: {sorted(_tree(tmp))}"
    outside = [f for f in _tree(cwd) if not f.startswith("out/")]
    assert outside == [], f"written outside the output directory: {outside}"
    assert (cwd / "out" / "leaderboard.html").is_file() and (cwd / "out" / "pair_accuracy.png").is_file()
    assert any(cache.rglob("*.pt"))  # the cache is where decoded domains went
