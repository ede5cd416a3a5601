"""nanoslm.sampling's one table: params.yaml, the CLI and the API allow the same values and read top-k's off alike."""

import subprocess
import sys

import pytest

from nanoslm import sampling
from nanoslm.cli import build_parser
from nanoslm.config import ConfigError, Sampling
from nanoslm.serve import limits
from nanoslm.serve.limits import ApiError

API = {"max_new_tokens": limits.MAX_TOKENS, "temperature": limits.TEMPERATURE, "top_k": limits.TOP_K,
       "top_p": limits.TOP_P}


def edges(field):
    """Values on and just past each end of the field's range."""
    step = 1 if field.kind is int else 1e-6
    return [field.kind(v) for v in (field.low - step, field.low, field.low + step, field.high - step, field.high,
                                     field.high + step)]


@pytest.mark.parametrize("field", sampling.FIELDS, ids=lambda f: f.name)
def test_params_yaml_and_the_api_allow_the_same_values(field):
    """A value the page accepts but `nanoslm generate` (or params.yaml) refuses, or the other way round, would
    make the same story impossible to write twice."""
    for value in edges(field):
        if value == field.typed_off:
            continue  # the API's way of typing off: see below
        try:
            Sampling(**{field.name: value}).check(sampling.TOP_K.high)  # the largest vocabulary
            in_config = True
        except ConfigError:
            in_config = False
        try:
            API[field.name].check(value)
            in_api = True
        except ApiError as err:
            in_api = False
            assert err.param == API[field.name].name
        assert in_config == in_api, (field.name, value, in_config, in_api)


def test_top_k_off_is_none_wherever_it_is_typed():
    """params.yaml says off with null; the API and the CLI also take 0 (a number box cannot hold null), and all
    of them hand the engine None, so top-k 0 never reaches it."""
    assert Sampling(top_k=None).top_k is None
    with pytest.raises(ConfigError, match="at least 1, or null"):
        Sampling(top_k=0)  # params.yaml: null is the one spelling
    assert limits.TOP_K.check(None) is None and limits.TOP_K.check(sampling.TOP_K.typed_off) is None
    for typed in ("off", "OFF", "none", "0"):
        args = build_parser().parse_args(["generate", "--top-k", typed])
        assert args.top_k is None, typed
    assert build_parser().parse_args(["generate"]).top_k == sampling.TOP_K.default == Sampling().top_k


def test_the_table_imports_nothing_heavy():
    """config imports the table and every DVC stage imports config: it must not drag torch or tiktoken in."""
    code = "import sys, nanoslm.sampling; print(sorted(m for m in ('torch', 'tiktoken', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
