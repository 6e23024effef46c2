"""config/README.md's configuration reference is the one generated from the schema, and the schema parses as
written."""

from __future__ import annotations

import yaml

from carvana_seg.pipeline import schema_doc
from carvana_seg.pipeline.config import SCHEMA_PATH

REGENERATE = "run `.venv/bin/python -m carvana_seg.pipeline.schema_doc --write config/README.md`"


def test_config_readme_configuration_reference_matches_the_schema(repo_root):
    readme = (repo_root / "config" / "README.md").read_text()
    assert schema_doc.readme_section(readme) == schema_doc.markdown_table(), (
        f"config/README.md's configuration reference differs from {SCHEMA_PATH.name}: {REGENERATE}"
    )


def test_the_top_readme_holds_no_copy_of_the_reference(repo_root):
    assert schema_doc.START not in (repo_root / "README.md").read_text()


def test_every_schema_key_is_documented_once(repo_root):
    table = schema_doc.markdown_table()
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for key in list(schema["properties"]) + ["variants[].lr", "train.loss.dice_weight", "data.synthetic.seed"]:
        assert table.count(f"| `{key}` |") == 1, key
    assert "| `folds.k` | integer | `5` | ≥ 2; ≤ 20 | Number of folds, grouped by car. |" in table


def test_schema_has_no_keys_cut_from_descriptions():
    """``{description: a, b}`` in a YAML flow mapping is the description 'a' plus a key 'b': quote such text."""
    assert schema_doc.stray_keys(yaml.safe_load(SCHEMA_PATH.read_text())) == []


def test_write_replaces_only_the_marked_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{schema_doc.START}\nold | table\n{schema_doc.END}\nafter\n")
    assert schema_doc.write_readme(readme) is True
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{schema_doc.END}\nafter\n")
    assert schema_doc.readme_section(text) == schema_doc.markdown_table()
    assert schema_doc.write_readme(readme) is False
