"""YAML to plain data that remembers where each mapping key and list item was written.

PyYAML's SafeLoader composes a node tree with marks and then throws them away; here the
tree is walked by hand so rules errors can say `file:line:column`, and a key written twice
in one mapping (`ttl: 10` then `ttl: 20`, where YAML keeps the last silently) is refused.
Scalars are still resolved by SafeLoader itself, so `10`, `true` and `'10'` mean what YAML
says they mean.
"""

from __future__ import annotations

from typing import Any

import yaml

Position = tuple[int, int]  # 1-based line and column


class MarkedDict(dict[Any, Any]):
    """A mapping with the position of itself and of each of its keys."""

    position: Position
    positions: dict[Any, Position]


class MarkedList(list[Any]):
    """A sequence with the position of itself and of each item."""

    position: Position
    positions: list[Position]


def _at(node: yaml.Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def position_of(value: Any, field: Any = None) -> Position | None:
    """Where `value[field]` (or `value` itself) was written, when known."""
    if isinstance(value, MarkedDict):
        return value.positions.get(field, value.position) if field is not None \
            else value.position
    if isinstance(value, MarkedList):
        if isinstance(field, int) and 0 <= field < len(value.positions):
            return value.positions[field]
        return value.position
    return None


def load(raw: bytes) -> tuple[Any, list[tuple[Position, str]]]:
    """The document and the duplicate-key problems; raise yaml.YAMLError on bad syntax."""
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems: list[tuple[Position, str]] = []
        return _build(loader, node, problems, 0), problems
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, problems: list[tuple[Position, str]],
           depth: int) -> Any:
    if depth > 50:  # an alias cycle, or a document no rules file needs
        raise yaml.YAMLError(f"line {_at(node)[0]}: nested too deeply")
    if isinstance(node, yaml.MappingNode):
        out = MarkedDict()
        out.position, out.positions = _at(node), {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                key = str(key)
            if key in out.positions:
                first = out.positions[key]
                problems.append((_at(key_node), f"key {key!r} is written twice (first at line "
                                                f"{first[0]}): keep one"))
                continue
            out.positions[key] = _at(key_node)
            out[key] = _build(loader, value_node, problems, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = MarkedList(_build(loader, n, problems, depth + 1) for n in node.value)
        items.position, items.positions = _at(node), [_at(n) for n in node.value]
        return items
    return loader.construct_object(node, deep=True)
