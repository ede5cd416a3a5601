"""params.yaml loading: every mistake is a one-line UserError naming the key."""

import re

import pytest
import yaml

from nanoslm.config import ConfigError, HardwareConfig, Params, Sampling, load_params
from nanoslm.errors import UserError

from conftest import REPO


def keys(tree, prefix=""):
    """Every key path in a nested mapping (list values are leaves)."""
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


def test_repo_params_load():
    for name in ("params.yaml", "params-ci.yaml", "params-gpu.yaml"):
        assert isinstance(load_params(REPO / name), Params)


@pytest.mark.parametrize("name", ["params-ci.yaml", "params-gpu.yaml"])
def test_other_params_files_have_the_same_keys_as_default(name):
    """cp params-ci.yaml (or params-gpu.yaml) params.yaml must give a complete params.yaml."""
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    other = yaml.safe_load((REPO / name).read_text())
    assert keys(default) == keys(other)


def write_variant(tmp_path, edit):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_for(tmp_path, edit) -> str:
    with pytest.raises(UserError) as info:
        load_params(write_variant(tmp_path, edit))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: x\n model: [\n")
    with pytest.raises(UserError, match=r"line 3"):
        load_params(path)


def test_unknown_key_suggests_the_nearest(tmp_path):
    msg = error_for(tmp_path, lambda p: p["model"].update(nlayer=4))
    assert "model.nlayer" in msg and "did you mean 'model.n_layer'" in msg


def test_missing_key(tmp_path):
    msg = error_for(tmp_path, lambda p: p["train"].pop("lr"))
    assert "missing key 'train.lr'" in msg


def test_float_written_without_dot_is_explained(tmp_path):
    path = tmp_path / "params.yaml"
    text = re.sub(r"^  lr: \S+", "  lr: 2e-3", (REPO / "params.yaml").read_text(), count=1, flags=re.M)
    assert "  lr: 2e-3" in text  # whatever the default's value
    path.write_text(text)
    with pytest.raises(UserError, match=r"'train.lr' must be a number, got the string '2e-3'.*3\.0e-4"):
        load_params(path)


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("model", "n_layer", "4", "'model.n_layer' must be an integer"),
        ("model", "bias", "no", "'model.bias' must be true or false"),
        ("model", "n_layer", 0, "'model.n_layer' must be positive"),
        ("model", "n_embd", -8, "'model.n_embd' must be positive"),
        ("train", "lr", 0.0, "'train.lr' must be positive"),
        ("train", "min_lr", 1.0, "must not exceed train.lr"),
        ("model", "dropout", 1.0, "'model.dropout' must be in [0, 1)"),
        ("model", "vocab_size", 1000, "'model.vocab_size' (1000) must be at least tokenizer.vocab_size"),
        ("tokenizer", "vocab_size", 256, "'tokenizer.vocab_size' must be between 257"),
        ("tokenizer", "vocab_size", 50258, "'tokenizer.vocab_size' must be between 257"),
        ("data", "max_train_stories", 0, "'data.max_train_stories' must be positive or null"),
        ("sample", "top_k", 0, "'sample.top_k' must be at least 1, or null"),
        ("sample", "top_k", 60000, "'sample.top_k' must be at most the vocabulary size"),
        ("sample", "temperature", -0.5, "'sample.temperature' must be from 0 (greedy) to 2"),
        ("sample", "temperature", 2.5, "'sample.temperature' must be from 0 (greedy) to 2"),
        ("sample", "top_p", 0.0, "'sample.top_p' must be in (0, 1]"),
        ("sample", "top_p", 1.5, "'sample.top_p' must be in (0, 1]"),
        ("sample", "max_new_tokens", 0, "'sample.max_new_tokens' must be between 1 and 10000"),
        ("sample", "max_new_tokens", 10**9, "'sample.max_new_tokens' must be between 1 and 10000"),
        ("hardware", "threads", -1, "'hardware.threads' must be zero or more"),
        ("sample", "prompts", "Once", "'sample.prompts' must be a list"),
        ("hardware", "device", "tpu", "'hardware.device' must be one of auto, cpu, cuda, mps"),
        ("hardware", "dtype", "int8", "'hardware.dtype' must be one of"),
        ("tokenizer", "name", "llama", "'tokenizer.name' must be one of gpt2"),
    ],
)
def test_bad_values(tmp_path, section, key, value, expected):
    assert expected in error_for(tmp_path, lambda p: p[section].update({key: value}))


def test_n_embd_must_divide_by_n_head(tmp_path):
    msg = error_for(tmp_path, lambda p: p["model"].update(n_embd=100, n_head=3))
    assert "'model.n_embd' (100) must be divisible by model.n_head (3)" in msg


def test_micro_batches_must_split_evenly_over_the_processes(tmp_path):
    msg = error_for(tmp_path, lambda p: (p["train"].update(grad_accum_steps=3), p["hardware"].update(nproc_per_node=2)))
    assert msg.endswith("'train.grad_accum_steps' (3) must be divisible by hardware.nproc_per_node (2): each process "
                        "takes an equal share of the micro-batches; set it to 4")
    even = load_params(write_variant(tmp_path, lambda p: (p["train"].update(grad_accum_steps=4),
                                                          p["hardware"].update(nproc_per_node=2))))
    assert (even.train.grad_accum_steps, even.hardware.nproc_per_node) == (4, 2)


def test_section_must_be_a_mapping(tmp_path):
    assert "model: expected a mapping" in error_for(tmp_path, lambda p: p.update(model=5))


def test_optional_and_int_as_float(tmp_path):
    params = load_params(write_variant(tmp_path, lambda p: (p["data"].update(max_train_stories=None),
                                                            p["train"].update(lr=1))))
    assert params.data.max_train_stories is None
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


# Every way of making a setting goes through the same checks as params.yaml, with the same message.
@pytest.mark.parametrize("make", [
    lambda p: p.updated("hardware", threads=-1),
    lambda p: HardwareConfig(device="cpu", dtype="auto", compile=False, threads=-1, nproc_per_node=1),
])
def test_hardware_from_code_is_checked_like_params(tiny_params, make):
    with pytest.raises(ConfigError, match=r"^'hardware.threads' must be zero or more, got -1$") as info:
        make(tiny_params)
    assert info.value.key == "hardware.threads" and info.value.field == "threads"


@pytest.mark.parametrize("values, key", [
    (dict(temperature=-1.0), "sample.temperature"),
    (dict(top_p=1.5), "sample.top_p"),
    (dict(top_k=0), "sample.top_k"),
    (dict(max_new_tokens=10**9), "sample.max_new_tokens"),
    (dict(temperature="hot"), "sample.temperature"),
])
def test_sampling_settings_are_checked_when_made(values, key):
    with pytest.raises(ConfigError) as info:
        Sampling(**values)
    assert info.value.key == key


def test_updated_checks_values_across_sections(tiny_params):
    with pytest.raises(ConfigError, match="'model.vocab_size' .* must be at least tokenizer.vocab_size"):
        tiny_params.updated("model", vocab_size=1000)
    with pytest.raises(ConfigError, match="'train.min_lr'"):
        tiny_params.updated("train", min_lr=1.0)


def test_requests_in_pre_training_need_room_for_the_four_chat_ids(tiny_params):
    """params-ci: tokenizer 50257, model 50261, requests.mix 0.5: the model holds the chat ids after GPT-2's."""
    assert tiny_params.model.vocab_size == tiny_params.tokenizer.vocab_size + 4 and tiny_params.requests.mix > 0
    with pytest.raises(ConfigError, match=r"'model.vocab_size' \(50257\) .* \+ the 4 chat ids .* set it to 50261"):
        tiny_params.updated("model", vocab_size=50257)
    assert tiny_params.updated("requests", mix=0.0).updated("model", vocab_size=50257).model.vocab_size == 50257
    with pytest.raises(ConfigError, match="'requests.mix' must be between 0"):
        tiny_params.updated("requests", mix=1.5)


def test_a_sample_config_is_a_sampling(tiny_params):
    s = tiny_params.sample
    assert isinstance(s, Sampling)
    assert s.check(tiny_params.model.vocab_size) is s
    with pytest.raises(ConfigError, match="at most the vocabulary size .10."):
        s.check(10)  # top_k 200 > 10 ids
