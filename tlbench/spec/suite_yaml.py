"""Reading a suite file: YAML with duplicate keys refused and a bound on its expanded size.

A suite is data, read with a safe loader that refuses a key given twice (YAML lets the last one win
silently) and counts every node before anything is built, so a few hundred bytes of aliases cannot
expand to a million leaves.
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
        data = _load_suite_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: malformed YAML: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a suite must be a mapping of keys (name, dataset, pairs, ...), got {type(data).__name__}"
        )
    if count_nodes(data, MAX_SUITE_NODES) > MAX_SUITE_NODES:
        raise UserError(
            f"{path}: the suite expands to more than {MAX_SUITE_NODES:,} values once its YAML aliases "
            "(*name) are followed; write the values out, or use fewer aliases"
        )
    return data


class _SuiteLoader(yaml.SafeLoader):
    """The safe loader, except that a key given twice in one mapping is an error, not "the last one wins"."""

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
