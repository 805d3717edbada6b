"""Where a key path (``routes[3].match.types[0]``) is in a YAML file: its line number.

The file is composed (``yaml.compose``), not loaded, because only the node tree keeps the marks.
A mapping entry is placed on the line of its key, a sequence item on the line it starts; a path
that is not in the file (a required field that is missing) falls back to its nearest ancestor
that is.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["LineIndex"]

# Where a path may be cut to find its parent: before `.key` or `[i]`.
_SPLIT = re.compile(r"(?=\.|\[)")


class LineIndex:
    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        try:
            root = yaml.compose(text)
        except yaml.YAMLError:
            root = None  # the caller reports the YAML error itself; paths then have no line
        if root is not None:
            self._walk(root, "", 1)

    def _walk(self, node: yaml.Node, path: str, line: int) -> None:
        self._lines[path] = line
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
                self._walk(value, f"{path}.{name}" if path else name, key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]", item.start_mark.line + 1)

    def line_of(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor in the file; None without a file."""
        while True:
            if path in self._lines:
                return self._lines[path]
            parts = _SPLIT.split(path)
            if len(parts) <= 1:
                return self._lines.get("")
            path = "".join(parts[:-1]).rstrip(".")
