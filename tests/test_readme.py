"""The README's params table: the user's only list of settings must name every key params.yaml and
nanoslm.config have, no key they lack, and each key's real default."""

import dataclasses
import re
import typing

import yaml

from nanoslm.config import Params

from conftest import REPO

ROW = re.compile(r"^\|\s*`(?P<key>[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)`\s*\|(?P<default>[^|]*)\|(?P<meaning>[^|]*)\|\s*$")


def readme_params_table(text: str) -> dict:
    """`section.key` -> its default cell, from the table under the README's `params.yaml` heading."""
    section = re.search(r"^## Configuration: `params.yaml`$(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Configuration: `params.yaml`' section"
    rows = {}
    for line in section.group(1).splitlines():
        match = ROW.match(line)
        if match:
            assert match["key"] not in rows, f"README.md lists {match['key']} twice"
            rows[match["key"]] = match["default"].strip()
    return rows


def yaml_keys(tree: dict) -> dict:
    """`section.key` -> value for every key of params.yaml (a list value, like sample.prompts, is one key)."""
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


def config_keys() -> set:
    """`section.key` for every field of nanoslm.config's Params sections: what the code reads."""
    hints = typing.get_type_hints(Params)
    return {f"{section.name}.{field.name}"
            for section in dataclasses.fields(Params) for field in dataclasses.fields(hints[section.name])}


def documented() -> dict:
    return readme_params_table((REPO / "README.md").read_text(encoding="utf-8"))


def params() -> dict:
    return yaml_keys(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))


def test_every_setting_in_params_yaml_is_documented_in_the_readme():
    """A user reading the README must find every key they can set; a new key without a row fails here."""
    missing = sorted(set(params()) - set(documented()))
    assert not missing, f"README.md's params table lacks {missing}: add a row `key` | default | meaning"


def test_the_readme_documents_no_setting_that_params_yaml_lacks():
    """A row for a removed or renamed key sends users to a setting that is refused as unknown."""
    stale = sorted(set(documented()) - set(params()))
    assert not stale, f"README.md's params table names {stale}, which params.yaml does not have"


def test_params_yaml_and_the_config_code_have_the_same_settings():
    """The README's table is checked against params.yaml; params.yaml must hold exactly what config reads."""
    assert set(params()) == config_keys()


def test_the_readme_gives_each_setting_its_real_default():
    """A default in the README that differs from params.yaml misleads whoever copies it into -S."""
    table = documented()
    wrong = []
    for key, value in params().items():
        if isinstance(value, list) or key not in table:
            continue  # a list is described in words; a missing row fails its own test
        literals = [yaml.safe_load(text) for text in re.findall(r"`([^`]*)`", table[key])]
        if value not in literals or type(value) is not type(literals[literals.index(value)]):
            wrong.append(f"{key}: README {table[key]!r}, params.yaml {value!r}")
    assert not wrong, "README.md's params table has stale defaults: " + "; ".join(wrong)


def test_the_table_parser_reads_a_row_and_ignores_prose():
    text = ("## Configuration: `params.yaml`\n\nSee `train.lr` in prose.\n\n| key | default | meaning |\n"
            "| --- | --- | --- |\n| `train.lr` | `8.0e-3` | peak |\n\n## Next\n| `model.n_layer` | `4` | x |\n")
    assert readme_params_table(text) == {"train.lr": "`8.0e-3`"}


def test_the_readme_stays_a_user_guide_of_at_most_300_lines():
    """Dated trials and long references belong in docs/; a README past 300 lines stops being read."""
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
