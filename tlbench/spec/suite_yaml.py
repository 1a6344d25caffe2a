"""Reading a suite file: YAML with duplicate keys refused and bounds on its nesting and expanded size.

A suite is data, read with a safe loader that refuses a key given twice (YAML lets the last one win
silently), stops at a nesting depth no suite needs (the parser recurses once per level: thousands of
``[`` would exhaust Python's stack) and counts every node before anything is built, so a few hundred
bytes of aliases cannot expand to a million leaves. ``--set`` values are parsed by the same rules
(:func:`parse_yaml`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlbench.data.files import RefusedFile, read_regular
from tlbench.errors import UserError

#: the most nodes (mappings, lists, scalars) a suite may expand to, aliases followed: a few hundred
#: bytes of YAML aliases can otherwise expand to millions of leaves and gigabytes of memory
MAX_SUITE_NODES = 100_000

#: the largest suite file read: far above any real suite, and a bound on what ``/dev/zero`` can cost
MAX_SUITE_BYTES = 4 * 2**20

#: the deepest nesting of lists and mappings a suite may have: real suites need five or six levels, and
#: the YAML parser recurses once per level, so thousands of ``[`` would end in a RecursionError
MAX_SUITE_DEPTH = 64

#: what to do about aliases that expand past :data:`MAX_SUITE_NODES`
TOO_MANY_VALUES = (
    f"expands to more than {MAX_SUITE_NODES:,} values once its YAML aliases (*name) are followed; "
    "write the values out, or use fewer aliases"
)


class TooDeep(yaml.composer.ComposerError):
    """YAML nested deeper than :data:`MAX_SUITE_DEPTH`: refused where it starts, before Python's stack runs out."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a suite file with the safe loader; a syntax error names the line."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_SUITE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such suite file") from None
    except RefusedFile as exc:  # a FIFO would hang the read, /dev/zero would fill memory
        limit = f"of at most {MAX_SUITE_BYTES // 2**20} MiB"
        raise UserError(f"{path}: {exc}; a suite must be a regular YAML file {limit}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read suite file ({exc})") from None
    try:
        data = parse_yaml(text, str(path), what="the suite", file=True)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}{_line_and_column(exc)}: malformed YAML: {_problem(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a suite must be a mapping of keys (name, dataset, pairs, ...), got {type(data).__name__}"
        )
    return data


def parse_yaml(text: str, origin: str, *, what: str, file: bool = False) -> Any:
    """``text`` parsed by a suite's rules; the limits (nesting, expanded size) as a :class:`UserError`
    that starts with ``origin`` (with the line and column where a ``file`` breaks one) and calls the
    text ``what``, a syntax error as ``yaml.YAMLError`` (a ``--set`` value that is not YAML is taken as
    a plain string)."""
    try:
        data = _load_suite_text(text)
    except TooDeep as exc:
        where = _line_and_column(exc) if file else ""
        raise UserError(
            f"{origin}{where}: {what} nests lists or mappings more than {MAX_SUITE_DEPTH} "
            "levels deep; a suite needs a few"
        ) from None
    if count_nodes(data, MAX_SUITE_NODES) > MAX_SUITE_NODES:
        raise UserError(f"{origin}: {what} {TOO_MANY_VALUES}")
    return data


def _line_and_column(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark else ""


def _problem(exc: yaml.YAMLError) -> str:
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


class _SuiteLoader(yaml.SafeLoader):
    """The safe loader, except that a key given twice in one mapping is an error, not "the last one wins",
    and nesting deeper than :data:`MAX_SUITE_DEPTH` is :class:`TooDeep`."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_SUITE_DEPTH:
                mark = self.peek_event().start_mark
                raise TooDeep(None, None, f"nested more than {MAX_SUITE_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar Python cannot hold as its YAML type (a date such as 2024-13-45, an integer of more
        digits than Python converts) is a YAML error at its place, not a ``ValueError`` traceback."""
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:
            value = str(node.value) if len(str(node.value)) <= 40 else f"{str(node.value)[:30]}..."
            reason = str(exc).split(";")[0].split(":")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"{value!r} cannot be read as {node.tag.rsplit(':', 1)[-1]} ({reason})", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_suite_text(text: str) -> Any:
    """What ``yaml.safe_load`` does, with :class:`_SuiteLoader` (still the safe constructor)."""
    loader = _SuiteLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def count_nodes(data: Any, limit: int) -> int:
    """How many values ``data`` holds with aliases followed, counting no further than ``limit + 1``.

    Shared (aliased) lists and mappings are counted every time they appear, as later copies and
    validation would expand them; a self-referencing alias simply reaches the limit.
    """
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count
