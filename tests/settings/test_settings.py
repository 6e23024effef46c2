"""The settings dataclasses (``carvana_seg.settings``) mirror the schema: one dataclass per config section, its fields
exactly the section's keys with matching types and enums, built from validated sections without changing a value.
Also: a rule's stage imports only the settings of sections it or its inputs read, so a new key reruns no other rule."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil
import types
import typing

import pytest
import yaml

from carvana_seg import settings as settings_pkg
from carvana_seg.pipeline import codedeps
from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.pipeline.stages import STAGES
from carvana_seg.settings.build import build

SCHEMA = yaml.safe_load(cfgmod.SCHEMA_PATH.read_text())
SECTION_MODULES = sorted(m.name for m in pkgutil.iter_modules(settings_pkg.__path__) if m.name != "build")
ALL_CLASSES = [
    obj
    for name in SECTION_MODULES
    for obj in vars(importlib.import_module(f"carvana_seg.settings.{name}")).values()
    if dataclasses.is_dataclass(obj) and obj.__module__ == f"carvana_seg.settings.{name}"
]
# one dataclass per section holds all its keys; a SUBSET class holds the keys one stage reads (PseudoSelection)
CLASSES = [c for c in ALL_CLASSES if not getattr(c, "SUBSET", False)]
SUBSETS = [c for c in ALL_CLASSES if getattr(c, "SUBSET", False)]
PER_VARIANT = {"train", "oof"}  # the rules that pass one variant in the slice (workflow/rules/train.smk)
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _node(schema: dict, section: str) -> dict:
    """The schema of a dotted section (``train.augment``; ``variants`` is its items)."""
    node = schema
    for part in section.split("."):
        node = node["properties"][part]
        node = node["items"] if node.get("type") == "array" else node
    return node


def _object_sections(node: dict, prefix: str = ""):
    """Every section of the schema that has keys of its own (the top level aside)."""
    for key, child in node.get("properties", {}).items():
        child = child["items"] if child.get("type") == "array" else child
        if "properties" in child:
            yield prefix + key
            yield from _object_sections(child, f"{prefix}{key}.")


def _json_types(hint: object) -> tuple[set[str], list | None]:
    """(JSON schema types, enum or None) that a field annotation stands for."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_json_types(a) for a in typing.get_args(hint)]
        return set().union(*(p[0] for p in parts)), next((p[1] for p in parts if p[1] is not None), None)
    if origin is typing.Literal:
        return {"string"}, list(typing.get_args(hint))
    if origin is tuple:
        return {"array"}, None
    if dataclasses.is_dataclass(hint):
        return {"object"}, None
    return {JSON_TYPES[hint]}, None


def differences(cls: type, schema: dict) -> list[str]:
    """How ``cls`` and its schema section disagree: keys, types, enums, nested sections; [] when in step."""
    node = _node(schema, cls.SECTION)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = node["properties"]
    out = [f"schema key {cls.SECTION}.{k} has no field" for k in keys if k not in fields]
    out += [f"field {cls.__name__}.{k} is no schema key of {cls.SECTION}" for k in fields if k not in keys]
    hints = typing.get_type_hints(cls)
    for name in set(fields) & set(keys):
        prop, (types_, enum) = keys[name], _json_types(hints[name])
        want = set(prop["type"]) if isinstance(prop.get("type"), list) else {prop.get("type")}
        if types_ != want:
            out.append(f"{cls.__name__}.{name}: annotation means {sorted(types_)}, schema says {sorted(want)}")
        if enum != prop.get("enum"):
            out.append(f"{cls.__name__}.{name}: Literal {enum} but schema enum {prop.get('enum')}")
        if "properties" in prop and getattr(hints[name], "SECTION", None) != f"{cls.SECTION}.{name}":
            out.append(f"{cls.__name__}.{name}: not the dataclass of section {cls.SECTION}.{name}")
    return out


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.SECTION)
def test_each_dataclass_has_exactly_the_keys_types_and_enums_of_its_section(cls):
    assert differences(cls, SCHEMA) == []


@pytest.mark.parametrize("cls", SUBSETS, ids=lambda c: c.__name__)
def test_a_subset_dataclass_holds_keys_of_its_section_with_their_types(cls):
    """Every field a schema key of its section, with its type and enum: only the missing keys are allowed."""
    wrong = [d for d in differences(cls, SCHEMA) if not d.startswith(f"schema key {cls.SECTION}.")]
    assert wrong == [] and len(dataclasses.fields(cls)) < len(_node(SCHEMA, cls.SECTION)["properties"])


def test_every_section_of_the_schema_has_one_dataclass():
    assert sorted(c.SECTION for c in CLASSES) == sorted(_object_sections(SCHEMA))


def test_the_check_fails_when_the_schema_and_a_dataclass_drift():
    """The test above is no tautology: a key added to the schema, one removed, or a changed type or enum fails it."""
    from carvana_seg.settings.train import Augment, Train

    added = copy.deepcopy(SCHEMA)
    added["properties"]["train"]["properties"]["augment"]["properties"]["rotate"] = {"type": "number", "default": 0}
    assert differences(Augment, added) == ["schema key train.augment.rotate has no field"]
    removed = copy.deepcopy(SCHEMA)
    del removed["properties"]["train"]["properties"]["compile"]
    assert differences(Train, removed) == ["field Train.compile is no schema key of train"]
    retyped = copy.deepcopy(SCHEMA)
    retyped["properties"]["train"]["properties"]["num_workers"]["type"] = "number"
    retyped["properties"]["train"]["properties"]["optimizer"]["enum"].append("sgd")
    assert len(differences(Train, retyped)) == 2
    nested = copy.deepcopy(SCHEMA)
    nested["properties"]["train"]["properties"]["ema"] = {"type": "object", "properties": {"decay": {"type": "number"}}}
    assert "train.ema" in set(_object_sections(nested)) - {c.SECTION for c in CLASSES}


def _resolved() -> dict:
    return cfgmod.resolve(
        {
            "name": "s",
            "data": {"source": "synthetic"},
            "folds": {"use": [0, 2]},
            "pseudo_label": {"variants": ["v"]},
            "variants": [{"name": "v", "width": 64, "height": 32}],
        }
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.SECTION)
def test_built_settings_hold_the_validated_values_unchanged(cls):
    """``asdict`` of a built object is the section it came from, as JSON: hashes of settings do not move."""
    section = _resolved()
    for part in cls.SECTION.split("."):
        section = section[part][0] if part == "variants" else section[part]
    built = build(cls, section)
    assert cfgmod.to_json(dataclasses.asdict(built)) == cfgmod.to_json(section)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, dataclasses.fields(cls)[0].name, None)


def test_build_refuses_a_section_with_missing_or_unknown_keys():
    from carvana_seg.settings.folds import Folds
    from carvana_seg.settings.train import Train

    with pytest.raises(ConfigError, match=r"config key 'folds'.*missing \['use'\], unknown \['usee'\]"):
        build(Folds, {"k": 5, "seed": 0, "stratify_by_area": True, "usee": None})
    train = copy.deepcopy(_resolved()["train"])
    del train["loss"]["dice_weight"]
    with pytest.raises(ConfigError, match=r"config key 'train.loss'.*missing \['dice_weight'\]"):
        build(Train, train)
    assert build(Folds, _resolved()["folds"]).use == (0, 2)


# The stages whose outputs each rule's stage reads (workflow/rules/*.smk, round one): a change to a section one of
# them reads reruns it, so the stage reruns anyway. report-figures takes the whole config as a param (plan=...).
INPUTS = {
    "fetch": set(),
    "validate": {"fetch"},
    "folds": {"validate"},
    "resize": {"validate"},
    "train": {"folds", "resize"},
    "oof": {"train"},
    "oof-table": {"oof"},
    "threshold": {"oof"},
    "ensemble": {"train", "validate"},
    "outliers": {"ensemble", "threshold", "folds"},
    "pseudo": {"ensemble", "threshold", "outliers"},
    "submission": {"ensemble", "threshold", "outliers"},
    "score": {"submission"},
    "submit": {"submission"},
    "pseudo-gain": {"threshold", "pseudo", "score"},
    "report-figures": set(STAGES),
}


def _upstream(stage: str) -> set[str]:
    todo, seen = [stage], set()
    while todo:
        for s in INPUTS.get(todo.pop(), set()) - seen:
            seen.add(s)
            todo.append(s)
    return seen - {stage}


def _sections(stage: str) -> set[str]:
    """The config sections ``stage`` reads (its slice; ``variants`` for the per-variant rules)."""
    slice_name = STAGES[stage][1]
    return set(cfgmod.STAGE_SECTIONS.get(slice_name, ())) | ({"variants"} if stage in PER_VARIANT else set())


def test_the_input_table_covers_every_rule():
    from carvana_seg.pipeline.stages import RULES

    assert set(INPUTS) == set(RULES.values())


@pytest.mark.parametrize("stage", sorted(INPUTS))
def test_a_rule_imports_only_the_settings_of_sections_it_or_its_inputs_read(stage):
    """A new key means a new field in its section's settings module, and a new ``code`` fingerprint for every
    stage importing it: only stages that rerun anyway (they or a stage upstream read the section, so its slice
    changes) may import it. So a new training key never reruns fetch, validate, folds or resize."""
    allowed = _sections(stage).union(*(_sections(s) for s in _upstream(stage)))
    imported = {
        m.rpartition(".")[2] for m in codedeps.stage_modules(stage) if m.startswith("carvana_seg.settings.")
    } - {"build"}
    assert imported <= allowed, f"{stage} imports the settings of {sorted(imported - allowed)}"
