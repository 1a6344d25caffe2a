"""Randomly broken suite files never crash ``tlbench run``: each gets one clean error line and exit 2.

Hypothesis mutates a valid suite (deleted keys, wrong types, random strings, unknown keys and
plugin names, bad pairs, huge and negative numbers, broken YAML, strategy parameters of the wrong
type or range, names that are not one path segment, paths to nothing, to devices and to files). Everything up to
the start of work runs for real (reading, validation, planning, the data pre-flight); the output directory's
lock, the first thing a run that would train takes, is replaced by a sentinel, so a mutation that
happens to stay valid stops there without training. Either way nothing may be written.
"""

from __future__ import annotations

import contextlib
import io
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tlbench
import tlbench.matrix.runner
from tlbench.cli import main
from tlbench.plugins.registry import Registry, set_registry

VALID: dict[str, Any] = {
    "name": "fuzz",
    "dataset": "sklearn_digits",
    "pairs": ["digits->digits+invert"],
    "backbones": [{"name": "test_efficientnet", "weights": "random"}],
    "strategies": ["source_only", {"dann": {"trade_off": 1.0}}],
    "seeds": [0],
    "recipe": {
        "steps": 4,
        "batch_size": 8,
        "image_size": 16,
        "resize_size": 18,
        "hflip": False,
        "log_every": 2,
        "lr": 0.01,
        "source_holdout": 0.1,
        "crop_scale": [0.5, 1.0],
    },
    "launcher": "local",
    "reports": ["csv"],
}
TOP_KEYS = list(VALID)
RECIPE_KEYS = list(VALID["recipe"])
REQUIRED = ["name", "dataset", "pairs", "backbones", "strategies"]


class StartedWork(Exception):
    """Raised where a valid suite would start writing and training."""


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
junk = st.one_of(
    text,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(text, max_size=3),
    st.dictionaries(text, st.integers(), max_size=2),
)
# huge or negative only: an in-range huge image size would make the pre-flight decode gigabytes
bad_number = st.one_of(
    st.integers(min_value=10**6, max_value=10**30),
    st.integers(max_value=-1),
    st.just(0),
    st.floats(min_value=1e300),
    st.floats(max_value=-1e-9),
)
unknown_name = st.from_regex(r"zz[a-z_]{1,10}", fullmatch=True)
bad_pair = st.one_of(
    st.sampled_from(
        [
            "digits=>digits+invert",
            "digits->digits",
            "nope->digits",
            "digits->digits+rotate:9",
            "digits->digits+nosuch",
            "->digits",
            "digits->",
            "digits->+invert",
            "a->b->c",
            "",
        ]
    ),
    text,
)
STRATEGY_PARAMS = [
    ("dann", "trade_off"),
    ("dann", "hidden"),
    ("dann", "dropout"),
    ("dann", "gamma"),
    ("source_only", "label_smoothing"),
    ("freeze", "label_smoothing"),
    ("mmd", "alphas"),
    ("mmd", "linear"),
    ("self_training", "threshold"),
    ("self_training", "warmup"),
    ("unfreeze", "mode"),
    ("unfreeze", "stages"),
    ("dlr", "decay"),
    ("kd", "alpha"),
    ("kd", "teacher_views"),
    ("kd", "teacher_params"),
]
hostile_name = st.one_of(st.sampled_from(["..", ".", "a/b", "/abs", "~", "", " ", "-", "name\n"]), text)
hostile_path = st.one_of(
    st.sampled_from(
        [
            "/nonexistent/w.pth",
            "/",
            "/dev/null",
            "/proc/self/status",
            "..",
            "~nobody/x",
            "relative/w.pth",
            "w.safetensors",
            "/etc",
        ]
    ),
    text,
)
yaml_breakers = st.sampled_from(
    [
        "[",
        "{",
        "]",
        "}",
        ": :",
        "\t",
        "- - :",
        "&a",
        "*undefined",
        "!!python/name:os.system ",
        "!!python/object/apply:os.system ['true'] ",
        "'",
        '"',
        "%",
        "@",
        "`",
        "\x00",
        "key: value\n  bad indent: 1\n",
    ]
)


@st.composite
def mutation(draw) -> str:
    """The text of a broken suite."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    kind = draw(
        st.sampled_from(
            [
                "delete",
                "wrong_type",
                "unknown_key",
                "recipe_number",
                "recipe_junk",
                "unknown_plugin",
                "bad_pair",
                "bad_yaml",
                "seeds",
                "strategy_param",
                "name",
                "path",
            ]
        )
    )
    if kind == "delete":
        del data[draw(st.sampled_from(REQUIRED))]
    elif kind == "wrong_type":
        data[draw(st.sampled_from(TOP_KEYS))] = draw(junk)
    elif kind == "unknown_key":
        where = draw(st.sampled_from(["top", "recipe", "backbone", "launcher"]))
        key = draw(unknown_name)
        if where == "top":
            data[key] = 1
        elif where == "recipe":
            data["recipe"][key] = 1
        elif where == "backbone":
            data["backbones"][0][key] = 1
        else:
            data["launcher"] = {"name": "local", key: 1}
    elif kind == "recipe_number":
        data["recipe"][draw(st.sampled_from(RECIPE_KEYS))] = draw(bad_number)
    elif kind == "recipe_junk":
        data["recipe"][draw(st.sampled_from(RECIPE_KEYS))] = draw(junk)
    elif kind == "unknown_plugin":
        name = draw(unknown_name)
        where = draw(
            st.sampled_from(
                [
                    "strategy",
                    "dataset",
                    "backbone",
                    "launcher",
                    "report",
                    "shift",
                    "strategy_param",
                    "dataset_option",
                    "launcher_option",
                ]
            )
        )
        if where == "strategy":
            data["strategies"].append(name)
        elif where == "dataset":
            data["dataset"] = name
        elif where == "backbone":
            data["backbones"] = [{"name": name, "weights": "random"}]
        elif where == "launcher":
            data["launcher"] = name
        elif where == "report":
            data["reports"] = [name]
        elif where == "shift":
            data["pairs"] = [f"digits->digits+{name}"]
        elif where == "strategy_param":
            data["strategies"] = [{"dann": {name: 1}}]
        elif where == "dataset_option":
            data["dataset_options"] = {name: 1}
        else:
            data["launcher"] = {"name": "local", "options": {name: 1}}
    elif kind == "bad_pair":
        data["pairs"] = [draw(bad_pair)]
    elif kind == "seeds":
        data["seeds"] = draw(
            st.one_of(
                st.just([]), st.lists(junk, min_size=1, max_size=3), st.just([1, 1]), st.just([10**20]), st.just([-1])
            )
        )
    elif kind == "strategy_param":
        strategy, param = draw(st.sampled_from(STRATEGY_PARAMS))
        data["strategies"] = [{strategy: {param: draw(st.one_of(junk, bad_number))}}]
    elif kind == "name":
        data["name"] = draw(hostile_name)
    elif kind == "path":
        where = draw(st.sampled_from(["data_root", "weights", "image_folder"]))
        path = draw(hostile_path)
        if where == "data_root":
            data["data_root"] = path
        elif where == "weights":
            data["backbones"] = [{"name": "test_efficientnet", "weights": path}]
        else:
            data["dataset"], data["dataset_options"] = "image_folder", {"path": path}
    suite = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    if kind == "bad_yaml":
        at = draw(st.integers(min_value=0, max_value=len(suite)))
        suite = suite[:at] + draw(yaml_breakers) + suite[at:]
    return suite


@pytest.fixture
def no_work(monkeypatch):
    def refuse(out_dir):
        raise StartedWork(str(out_dir))

    monkeypatch.setattr(tlbench.matrix.runner, "run_lock", refuse)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@pytest.mark.slow
@given(suite_text=mutation())
def test_broken_suites_get_one_clean_error_line(suite_text, tmp_path, no_work):
    path: Path = tmp_path / "fuzz.yaml"
    path.write_text(suite_text, encoding="utf-8")
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["run", str(path), "--out", str(out), "--quiet"])
        except StartedWork:
            code = None  # the mutation left a valid suite: it got as far as starting work, and no further
    err = stderr.getvalue()
    assert "Traceback" not in err + stdout.getvalue()
    if code is not None:
        lines = err.splitlines()
        assert code == 2, (suite_text, err)
        assert len(lines) == 1 and lines[0].startswith("tlbench: error: "), (suite_text, err)
    assert not out.exists(), "something was written before the run started"


def test_the_unmutated_suite_is_valid(tmp_path, no_work):
    """The fuzzer's base suite passes validation (so the mutations, not the base, cause the errors)."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(StartedWork):
        main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])


# -- --set values and plugin names -------------------------------------------------------------------------
# The same promise for what the command line and plugins bring: random and hostile ``--set KEY=VALUE``
# strings, and names registered by a plugin, end in exit 0 (a valid result) or one error line and exit 2
# (1 from ``tlbench plugins``, which reports a failed plugin so); never a traceback. ``--dry-run`` stops
# a valid suite after planning, so each example takes milliseconds.

#: six levels of ten aliases: a million values once followed
ALIAS_BOMB = (
    "[&a [x,x,x,x,x,x,x,x,x,x], "
    + ", ".join(f"&{b} [{','.join([f'*{a}'] * 10)}]" for a, b in zip("abcde", "bcdef"))
    + "]"
)
SET_KEYS = [
    "name",
    "dataset",
    "pairs",
    "seeds",
    "backbones",
    "strategies",
    "recipe",
    "recipe.steps",
    "recipe.lr",
    "recipe.crop_scale",
    "dataset_options.path",
    "launcher",
    "launcher.options.x",
    "reports",
    "trackers",
    "data_root",
    "selection",
    "strategies.0",
    "recipe.steps.deeper",
]
hostile_key = st.one_of(
    st.sampled_from(SET_KEYS),
    st.sampled_from(["", ".", "..", "a..b", "recipe.", ".recipe", " ", "\x00", "x" * 10_000, "key\nline", "é.ü"]),
    text,
)
hostile_value = st.one_of(
    text,
    yaml_breakers,
    st.sampled_from(
        [
            "",
            "~",
            "null",
            "yes",
            "on",
            ".nan",
            "-.inf",
            "0x1F",
            "0o17",
            "1_000",
            "2024-13-45",
            "2024-01-01",
            "12:30:00",
            "9" * 5000,
            "1e400",
            "!!binary aGk=",
            "!!set {a, b}",
            "!!omap [a: 1]",
            "? [a]\n: b",
            "<<: {a: 1}",
            "{<<: *x}",
            "&a [*a]",
            "---\na: 1\n---\nb: 2",
            "...",
            "\ufeffa: 1",
            "\u202eevil",
            "🙂" * 100,
            "\x00\x01\x02",
            "a\x00b: 1",
            ALIAS_BOMB,
        ]
    ),
    st.builds(lambda n, opener: opener * n, st.integers(1, 3000), st.sampled_from(["[", "{a: ", "- ", "{"])),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 3000)),
    st.builds(lambda n: "{a: " * n + "1" + "}" * n, st.integers(1, 3000)),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "9"]), st.integers(10_000, 50_000)),
    st.builds(lambda v: yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip(), junk),
)
assignment = st.one_of(st.builds(lambda k, v: f"{k}={v}", hostile_key, hostile_value), text)


def one_clean_line_or_success(code: int | None, out: str, err: str, *, codes=(0, 2)) -> None:
    """Exit 0 without an error, or one ``tlbench: error:`` line and exit 2; never a traceback."""
    assert "Traceback" not in out + err
    assert code in codes, (code, err[:2000])
    errors = [line for line in err.splitlines() if not line.startswith("tlbench: warning: ")]
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("tlbench: error: "), err[:2000]
    else:
        assert errors == [], err[:2000]


def run_quietly(argv: list[str]) -> tuple[int | None, str, str]:
    """``tlbench ARGV``: (exit code, stdout, stderr); a usage error's exit (argparse's) is its code."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code: int | None = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else None
    return code, stdout.getvalue(), stderr.getvalue()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(assignments=st.lists(assignment, min_size=1, max_size=3))
def test_hostile_set_values_get_one_clean_error_line(assignments, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(VALID))
    out = tmp_path / "out"
    sets = [f"--set={a}" for a in assignments]  # '--set -x' would be argparse's usage error
    code, stdout, stderr = run_quietly(["run", str(path), "--out", str(out), "--quiet", "--dry-run", *sets])
    one_clean_line_or_success(code, stdout, stderr)
    assert not out.exists()


hostile_name = st.one_of(
    st.sampled_from(
        [
            "two words",
            "line\nbreak",
            "nul\x00",
            "a->b",
            "x" * 10_000,
            "",
            " ",
            "blur:3",
            "-dash",
            "_under",
            "tab\t",
            "a,b",
            "*",
            "..",
            "a/b",
            "\u202eevil",
            "é",
            "dann",  # a built-in's name: a clash, kept beside it
            "source_only",
        ]
    ),
    text,
)
PLUGIN_KINDS = [
    ("strategies", tlbench.Strategy, "register_strategies"),
    ("reporters", tlbench.Reporter, "register_reporters"),
    ("launchers", tlbench.Launcher, "register_launchers"),
    ("validators", tlbench.Validator, "register_validators"),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(hostile_name, min_size=1, max_size=3),
    kind=st.sampled_from(PLUGIN_KINDS),
    plugin=st.one_of(st.just("hostile"), hostile_name),
)
@example(names=["dann"], kind=PLUGIN_KINDS[0], plugin="line\nbreak")  # a clash names the plugin
@example(names=["two words"], kind=PLUGIN_KINDS[0], plugin="\x1e")  # a line break to str.splitlines
def test_hostile_plugin_names_get_warnings_not_tracebacks(names, kind, plugin, tmp_path):
    listed, base, hook = kind
    classes = [type(f"Hostile{i}", (base,), {"name": name}) for i, name in enumerate(names)]

    def register(register):
        for cls in classes:
            register(cls)

    registry = Registry(plugins={plugin: types.SimpleNamespace(**{hook: tlbench.hookimpl(register)})})
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(VALID))
    try:
        set_registry(registry)
        code, stdout, stderr = run_quietly(["list", listed])
        one_clean_line_or_success(code, stdout, stderr)
        kind_name = base.plugin_kind
        assert len(stdout.splitlines()) == len(registry.names(kind_name))  # one line a name, whatever they are
        code, stdout, stderr = run_quietly(["plugins"])
        one_clean_line_or_success(code, stdout, stderr, codes=(0, 1))
        assert len(stdout.splitlines()) == len(stdout.split("\n")) - 1  # no other line breaks than its own
        wanted = ",".join(n for n in names if n.strip() and "," not in n) or "source_only"
        code, stdout, stderr = run_quietly(
            ["run", str(path), "--dry-run", "--out", str(tmp_path / "out"), f"--strategies={wanted}"]
        )
        one_clean_line_or_success(code, stdout, stderr)
    finally:
        set_registry(None)
