import dataclasses
import re

import pytest
import torch

from nanoslm import checkpoint
from nanoslm.config import GPTConfig
from nanoslm.errors import UserError
from nanoslm.model import GPT

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)


def make(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg)


class Compiled(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule: the real model under `_orig_mod`."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model


class Distributed(torch.nn.Module):
    """Stands in for DistributedDataParallel: the real model under `module`."""

    def __init__(self, model):
        super().__init__()
        self.module = model


class Arbitrary:
    """Any Python object: pickled by reference, so loading it could run code."""

    def __init__(self):
        self.x = 1


@pytest.fixture
def saved(tmp_path):
    model = make()
    path = tmp_path / "models" / "best.pt"  # the folder does not exist yet
    checkpoint.save(path, model, step=7, val_loss=2.5, tokenizer="gpt2")
    return path, model


def test_round_trip(saved):
    path, model = saved
    loaded, state = checkpoint.load_model(path)
    assert loaded.config == CFG
    assert not loaded.training
    assert state["step"] == 7 and state["val_loss"] == 2.5 and state["tokenizer"] == "gpt2"
    assert state["format_version"] == checkpoint.FORMAT_VERSION
    assert state["model_config"] == dataclasses.asdict(CFG)
    assert "model" not in state  # the weights went into the model
    expected = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(idx), model.eval()(idx))


@pytest.mark.parametrize("wrap", [Compiled, Distributed, lambda m: Distributed(Compiled(m))])
def test_saved_keys_carry_no_wrapper_prefix(tmp_path, wrap):
    model = make()
    wrapped = wrap(model)
    assert any(k.startswith(("_orig_mod.", "module.")) for k in wrapped.state_dict())  # the wrapper would add them
    path = tmp_path / "w.pt"
    checkpoint.save(path, wrapped, step=1, val_loss=1.0, tokenizer="gpt2")
    keys = torch.load(path, weights_only=True)["model"].keys()
    assert set(keys) == set(model.state_dict().keys())
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    checkpoint.load_model(path)  # and it loads into a plain GPT


@pytest.mark.parametrize("keep", [0, 2, 100, 0.5, -1])
def test_truncated_file_is_a_damaged_checkpoint(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    with pytest.raises(checkpoint.DamagedCheckpoint, match="best.pt: not a readable checkpoint .truncated or corrupt.; "
                                                           "train a new one: dvc repro --force train") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(checkpoint.DamagedCheckpoint):
        checkpoint.load_model(path)


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b"version https://git-lfs.github.com/spec/v1\n",
                                     b"PK\x03\x04" + bytes(range(256)) * 4])
def test_garbage_file_is_a_damaged_checkpoint_not_a_refused_one(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="best.pt: not a readable checkpoint") as err:
        checkpoint.load(path)
    assert "Python objects" not in str(err.value) and "weights_only" not in str(err.value)


def test_a_torch_file_that_is_no_nano_slm_checkpoint_is_damaged(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="x.pt: not a Nano-SLM checkpoint"):
        checkpoint.load(path)


def test_the_cause_is_cut_at_a_word_boundary(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    long = "word " * 100
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(long + "\nsecond line")))
    monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    with pytest.raises(checkpoint.DamagedCheckpoint) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert re.search(r"\(cause: RuntimeError: (word ){10,}word \.\.\.\)$", message), message  # whole words only
    monkeypatch.setenv("NANOSLM_DEBUG", "1")
    with pytest.raises(checkpoint.DamagedCheckpoint) as err:
        checkpoint.load(path)
    assert "second line" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dvc repro"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="not found"):
        checkpoint.load_model(tmp_path / "nope.pt")


def test_pickled_python_object_is_refused_in_whole_sentences(tmp_path, saved):
    path, model = saved
    state = torch.load(path, weights_only=True)
    state["extra"] = Arbitrary()
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    assert isinstance(torch.load(evil, weights_only=False)["extra"], Arbitrary)  # a readable file otherwise
    with pytest.raises(UserError) as err:
        checkpoint.load(evil)
    assert not isinstance(err.value, checkpoint.DamagedCheckpoint)  # training must not throw it away as garbage
    assert str(err.value) == (f"{evil}: refused to load it, because it holds Python objects "
                              f"(test_checkpoint.Arbitrary) besides tensors and plain values, and loading those could "
                              f"run code. Use a checkpoint written by Nano-SLM, or train a new one: "
                              f"dvc repro --force train")


def test_wrong_format_version(tmp_path, saved):
    path, _ = saved
    state = torch.load(path, weights_only=True)
    state["format_version"] = 99
    torch.save(state, path)
    with pytest.raises(UserError, match="format 99"):
        checkpoint.load(path)


@pytest.mark.parametrize("change", [{"n_embd": 32}, {"n_layer": 2}, {"vocab_size": 50304}, {"surprise": 1}])
def test_weights_that_do_not_match_the_config(saved, change):
    path, _ = saved
    state = torch.load(path, weights_only=True)
    state["model_config"] = {**state["model_config"], **change}
    torch.save(state, path)
    with pytest.raises(UserError, match="do not match"):
        checkpoint.load_model(path)


def test_atomic_write_leaves_no_temp_file(tmp_path, saved):
    path, model = saved
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    before = path.read_bytes()
    with pytest.raises(Exception):
        checkpoint.save(path, model, step=8, val_loss=1.0, tokenizer="gpt2", bad=lambda: None)  # cannot be pickled
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    assert path.read_bytes() == before  # the old checkpoint survives a failed save
    checkpoint.save(path, model, step=9, val_loss=1.0, tokenizer="gpt2")
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    assert checkpoint.load(path)["step"] == 9


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu(tmp_path, monkeypatch):
    """best.pt / last.pt trained on CUDA, then evaluated, sampled, exported or resumed on a laptop.

    Without a GPU, the file is made as CUDA writes it: torch.save records each storage's device through
    torch.serialization.location_tag, which alone is faked to say "cuda:0" (the tensors themselves are CPU ones).
    """
    model = make()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])).backward()
    optimizer.step()
    path = tmp_path / "last.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        checkpoint.save(path, model, step=3, val_loss=2.0, tokenizer="gpt2",
                        training={"optimizers": [optimizer.state_dict()], "cuda": torch.get_rng_state()})
    if not torch.cuda.is_available():  # the file really names the GPU: read as it is, it needs one
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded, state = checkpoint.load_model(path)  # every reader's loader (evaluate, sample, export, serve)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    checkpoint.require_config(path, CFG)  # the evaluate stage's config check reads it too
    resumed = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    resumed.load_state_dict(checkpoint.load(path, map_location=torch.device("cpu"))["training"]["optimizers"][0])
    assert resumed.state_dict()["state"][0]["exp_avg"].device.type == "cpu"
