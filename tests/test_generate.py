import pytest
import torch

from conftest import CHAT_ANSWER, CHAT_QUESTION
from nanoslm import checkpoint
from nanoslm.config import GPTConfig, SampleConfig
from nanoslm.engine import Engine, Sampling, generators
from nanoslm.generate import TextStream, sample_prompts, stream_text, write_samples
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.tokenizer import get_encoding

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
ENC = get_encoding("gpt2")


def make(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


# ---- streaming text ----

TEXT = "A café, “quoted” 🎉 and 日本語 — the end."


def test_text_stream_never_prints_half_a_character():
    tokens = ENC.encode_ordinary(TEXT)
    assert any("\ufffd" in ENC.decode([t]) for t in tokens)  # some characters really are split across tokens
    stream = TextStream(ENC)
    pieces = [stream.push(t) for t in tokens]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + stream.flush() == TEXT
    assert stream.flush() == ""


def test_text_stream_is_the_whole_decode_even_for_invalid_byte_sequences():
    tokens = torch.randint(0, ENC.n_vocab - 1, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    assert "\ufffd" in ENC.decode(tokens)  # random tokens do produce invalid UTF-8
    stream = TextStream(ENC)
    assert "".join(stream.push(t) for t in tokens) + stream.flush() == ENC.decode(tokens)


def test_text_stream_flushes_an_invalid_ending():
    stream = TextStream(ENC)
    (first,) = ENC.encode_ordinary("🎉")[:1]  # the first bytes of a 4-byte character, never completed
    assert stream.push(ENC.encode_ordinary("ok")[0]) == "ok"
    assert stream.push(first) == ""
    assert stream.flush().startswith("\ufffd")


def test_stream_text_is_the_engine_output_piece_by_piece():
    model = make()
    engine = Engine(model, CPU)
    sampling = Sampling(12, 1.0, None)
    pieces = list(stream_text(engine, ENC, "Once upon a time", sampling, generators(4, 1)[0]))
    (ids,) = engine.generate([ENC.encode_ordinary("Once upon a time")], sampling, generators(4, 1))
    assert "".join(pieces) == ENC.decode(ids)
    assert len(pieces) > 1


# ---- from a checkpoint ----

PROMPTS = ["Once upon a time there was a pumpkin.", "Tom and his dog", "A café, “quoted”"]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save(path, make(), step=30, val_loss=4.25, tokenizer="gpt2")
    return path


def sample_cfg(prompts=PROMPTS, **kw):
    values = dict(prompts=list(prompts), requests=[], max_new_tokens=8, temperature=0.8, top_k=200, top_p=1.0,
                  seed=1337)
    return SampleConfig(**{**values, **kw})


def test_sample_prompts_is_reproducible(ckpt):
    samples, state = sample_prompts(ckpt, sample_cfg(), CPU)
    again, _ = sample_prompts(ckpt, sample_cfg(), CPU)
    assert samples == again
    assert [s["prompt"] for s in samples] == PROMPTS
    assert state["step"] == 30
    # prompt i is sampled with seed + i, independently of the others
    engine = Engine(checkpoint.load_model(ckpt)[0], CPU)
    for i, s in enumerate(samples):
        (ids,) = engine.generate([ENC.encode_ordinary(PROMPTS[i])], Sampling(8, 0.8, 200), [generators(1337 + i, 1)[0]])
        assert s["text"] == ENC.decode(ids)
    fewer, _ = sample_prompts(ckpt, sample_cfg(PROMPTS[:2]), CPU)
    assert fewer == samples[:2]
    other_seed, _ = sample_prompts(ckpt, sample_cfg(seed=1), CPU)
    assert other_seed != samples
    nucleus, _ = sample_prompts(ckpt, sample_cfg(top_p=0.5), CPU)
    assert nucleus != samples


def test_write_samples(ckpt, tmp_path):
    out = tmp_path / "samples" / "samples.md"
    cfg = sample_cfg(top_k=None)
    samples = write_samples(ckpt, cfg, CPU, out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Samples\n")
    assert "step 30" in text and "val loss 4.2500" in text and "top-k off" in text and "seed 1337" in text
    assert "top-p off" in text
    for s in samples:
        assert f"## {s['prompt']}\n" in text
        assert f"**{s['prompt']}**{s['text']}" in text
    assert [s["prompt"] for s in samples] == PROMPTS
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.md"]  # no temp file left


def test_a_chat_checkpoint_answers_the_sample_requests_and_a_base_one_says_it_cannot(chat_checkpoint, ckpt, tmp_path):
    """sample.requests go to a chat checkpoint as conversations: the tuned fixture gives its learned answer."""
    cfg = sample_cfg(requests=[CHAT_QUESTION], temperature=0.0, max_new_tokens=30)
    out = tmp_path / "chat.md"
    samples = write_samples(chat_checkpoint, cfg, CPU, out)
    assert [s.get("prompt") for s in samples[:-1]] == PROMPTS and samples[-1] == {"request": CHAT_QUESTION,
                                                                                   "text": CHAT_ANSWER}
    assert f"## Request: {CHAT_QUESTION}\n\n{CHAT_ANSWER}\n" in out.read_text(encoding="utf-8")
    base = write_samples(ckpt, cfg, CPU, tmp_path / "base.md")
    assert all("request" not in s for s in base)
    assert "not trained on conversations" in (tmp_path / "base.md").read_text(encoding="utf-8")
