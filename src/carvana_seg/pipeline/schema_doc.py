"""The "Configuration reference" of ``config/README.md``: a Markdown table of every key of the config schema, generated.

    python -m carvana_seg.pipeline.schema_doc                           # print the table
    python -m carvana_seg.pipeline.schema_doc --write config/README.md  # replace the table between the markers

``tests/pipeline/test_readme.py`` fails when that table differs from the schema's, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from carvana_seg.pipeline.config import SCHEMA_PATH

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
HEADER = "| key | type | default | allowed | description |\n|---|---|---|---|---|"


def _type(node: dict[str, Any]) -> str:
    types = node.get("type", "")
    types = types if isinstance(types, list) else [types]
    if "array" in types and node.get("items", {}).get("type") == "object":
        return "list of objects"
    if "array" in types and "type" in node.get("items", {}):
        types = [f"list of {node['items']['type']}s" if t == "array" else t for t in types]
    return " or ".join(t for t in types if t)


def _allowed(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append(", ".join(f"`{json.dumps(v)}`" if v is None else f"`{v}`" for v in node["enum"]))
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    if "multipleOf" in node:
        parts.append(f"multiple of {node['multipleOf']}")
    if "pattern" in node:
        parts.append(f"`{node['pattern']}`")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
    items = node.get("items", {})
    if items.get("type") != "object" and "minimum" in items:
        parts.append(f"items ≥ {items['minimum']}")
    return "; ".join(parts)


def _default(node: dict[str, Any], required: bool) -> str:
    if "default" not in node:
        return "**required**" if required else ""
    value = node["default"]
    if isinstance(value, dict) and not value:
        return ""  # a section whose keys have their own defaults
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """One line, ``|`` escaped, and ``<``/``>`` outside code spans as entities (``data/<name>`` is no HTML tag)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def rows(node: dict[str, Any], prefix: str = "", required: bool = False) -> Iterator[list[str]]:
    """One row (key, type, default, allowed, description) per key, depth first in schema order."""
    if prefix:
        yield [f"`{prefix}`", _type(node), _default(node, required), _allowed(node), node.get("description", "")]
    if node.get("type") == "array" and node.get("items", {}).get("type") == "object":
        node, prefix = node["items"], f"{prefix}[]"
    needed = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        yield from rows(child, f"{prefix}.{key}" if prefix else key, key in needed)


KEYWORDS = {
    "$schema",
    "description",
    "type",
    "additionalProperties",
    "required",
    "properties",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "pattern",
    "items",
    "minItems",
    "maxItems",
    "const",
    "format",
    "title",
    "examples",
}


def stray_keys(node: Any, path: str = "") -> list[str]:
    """Schema paths holding a key that is no JSON Schema keyword: typically the tail of a description cut at an
    unquoted comma in a YAML flow mapping (``{description: a, b}`` gives the key ``b``)."""
    found = []
    if isinstance(node, dict):
        for key, child in node.items():
            if path.endswith("/properties"):
                found += stray_keys(child, f"{path}/{key}")
            elif key not in KEYWORDS:
                found.append(f"{path}/{key}")
            else:
                found += stray_keys(child, f"{path}/{key}")
    elif isinstance(node, list):
        for child in node:
            found += stray_keys(child, path)
    return found


def markdown_table(schema_path: Path = SCHEMA_PATH) -> str:
    """The configuration reference table of the schema at ``schema_path``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    body = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows(schema)]
    return "\n".join([HEADER, *body])


def readme_section(text: str) -> str:
    """The text between the config-reference markers of a README (stripped)."""
    m = re.search(re.escape(START) + r"(.*?)" + re.escape(END), text, re.S)
    if m is None:
        raise ValueError(f"README has no {START} ... {END} markers")
    return m.group(1).strip()


def write_readme(readme: Path, schema_path: Path = SCHEMA_PATH) -> bool:
    """Replace the table between the markers; return whether the README changed."""
    text = Path(readme).read_text()
    readme_section(text)  # the markers must exist
    new = re.sub(
        re.escape(START) + r".*?" + re.escape(END),
        lambda _: f"{START}\n{markdown_table(schema_path)}\n{END}",
        text,
        flags=re.S,
    )
    if new != text:
        Path(readme).write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carvana_seg.pipeline.schema_doc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--write", metavar="README", help="replace the table between the markers in this file")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme(Path(args.write))
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
    else:
        print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
