import pytest
import torch

from nanoslm import checkpoint
from nanoslm.config import GPTConfig, SampleConfig
from nanoslm.generate import generate, sample_prompts, write_samples
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.tokenizer import EOT, get_encoding

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
PROMPT = [7454, 2402, 257, 640]  # "Once upon a time"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny ops run far faster than on two threads that share 2 busy cores; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def gen(model, prompt=PROMPT, n=10, temperature=0.0, top_k=None, seed=0):
    return generate(model, prompt, n, temperature, top_k, EOT, torch.Generator().manual_seed(seed), CPU)


def argmax_loop(model, prompt, n):
    """Greedy decoding by hand: full logits of the last position from the hidden states and the tied head."""
    ids = list(prompt)
    new = []
    with torch.no_grad():
        for _ in range(n):
            context = torch.tensor([ids[-CFG.block_size:]])
            logits = model.hidden(context)[0, -1] @ model.transformer.wte.weight.T
            next_id = int(logits.argmax())
            if next_id == EOT:
                break
            new.append(next_id)
            ids.append(next_id)
    return new


class Scripted(torch.nn.Module):
    """A stand-in model whose next token is always the next one in `script`; records what it is shown."""

    def __init__(self, script):
        super().__init__()
        self.config = CFG
        self.script = list(script)
        self.seen = []

    def forward(self, idx):
        self.seen.append(idx.clone())
        logits = torch.full((idx.size(0), CFG.vocab_size), -1e9)
        logits[:, self.script[len(self.seen) - 1]] = 0.0
        return logits


def test_greedy_is_deterministic_and_equals_an_argmax_loop():
    model = make()
    expected = argmax_loop(model, PROMPT, 10)
    assert len(expected) == 10  # no EOT from this model
    assert gen(model, seed=0) == expected
    assert gen(model, seed=123) == expected  # greedy ignores the generator


def test_same_seed_same_sample_different_seed_different_sample():
    model = make()
    a = gen(model, n=12, temperature=1.0, seed=5)
    b = gen(model, n=12, temperature=1.0, seed=5)
    c = gen(model, n=12, temperature=1.0, seed=6)
    assert a == b
    assert a != c  # nearly uniform over 50,257 ids: equal by chance with probability ~0
    assert len(a) == len(c) == 12
    assert a != argmax_loop(model, PROMPT, 12)  # sampling is not greedy


def test_top_k_1_equals_greedy():
    model = make()
    assert gen(model, n=10, temperature=0.8, top_k=1, seed=9) == argmax_loop(model, PROMPT, 10)


def test_top_k_limits_the_choices():
    model = make()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT]))[0]
    allowed = set(torch.topk(logits, 3).indices.tolist())
    firsts = {gen(model, n=1, temperature=2.0, top_k=3, seed=s)[0] for s in range(30)}
    assert firsts <= allowed and len(firsts) > 1


def test_stops_at_end_of_text_and_leaves_it_out():
    model = Scripted([11, 12, EOT, 13, 14])
    assert gen(model, n=10) == [11, 12]
    assert len(model.seen) == 3  # no step after EOT
    assert model.seen[-1][0].tolist() == PROMPT + [11, 12]
    sampled = Scripted([EOT])  # -1e9 elsewhere: sampling must pick EOT too
    assert gen(sampled, n=10, temperature=1.0, top_k=5) == []


def test_at_most_max_new_tokens():
    model = make()
    for n in (1, 3, 7):
        assert len(gen(model, n=n)) == n
        assert len(gen(model, n=n, temperature=1.0)) == n
    scripted = Scripted(range(100, 200))
    assert gen(scripted, n=4) == [100, 101, 102, 103]
    assert len(scripted.seen) == 4


def test_prompt_longer_than_block_size_is_cropped():
    model = make()
    long_prompt = list(range(1000, 1000 + 3 * CFG.block_size))
    out = gen(model, prompt=long_prompt, n=6)
    assert out == argmax_loop(model, long_prompt, 6)
    # the same as a prompt of just its last block_size tokens, since that is all the model sees
    assert out == gen(model, prompt=long_prompt[-CFG.block_size:], n=6)
    scripted = Scripted(range(5, 10))
    gen(scripted, prompt=long_prompt, n=5)
    assert all(seen.size(1) == CFG.block_size for seen in scripted.seen)
    assert scripted.seen[-1][0].tolist() == (long_prompt + [5, 6, 7, 8])[-CFG.block_size:]


def test_empty_prompt_starts_from_end_of_text():
    model = make()
    assert gen(model, prompt=[], n=5) == gen(model, prompt=[EOT], n=5)


# ---- from a checkpoint ----

PROMPTS = ["Once upon a time there was a pumpkin.", "Tom and his dog", "A café, “quoted”"]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save(path, make(), step=30, val_loss=4.25, tokenizer="gpt2")
    return path


def sample_cfg(prompts=PROMPTS, **kw):
    values = dict(prompts=list(prompts), max_new_tokens=8, temperature=0.8, top_k=200, seed=1337)
    return SampleConfig(**{**values, **kw})


def test_sample_prompts_is_reproducible(ckpt):
    samples, state = sample_prompts(ckpt, sample_cfg(), CPU)
    again, _ = sample_prompts(ckpt, sample_cfg(), CPU)
    assert samples == again
    assert [s["prompt"] for s in samples] == PROMPTS
    assert state["step"] == 30
    # prompt i is sampled with seed + i, independently of the others
    enc = get_encoding("gpt2")
    model, _ = checkpoint.load_model(ckpt)
    for i, s in enumerate(samples):
        ids = gen(model, prompt=enc.encode_ordinary(PROMPTS[i]), n=8, temperature=0.8, top_k=200, seed=1337 + i)
        assert s["text"] == enc.decode(ids)
    fewer, _ = sample_prompts(ckpt, sample_cfg(PROMPTS[:2]), CPU)
    assert fewer == samples[:2]
    other_seed, _ = sample_prompts(ckpt, sample_cfg(seed=1), CPU)
    assert other_seed != samples


def test_write_samples(ckpt, tmp_path):
    out = tmp_path / "samples" / "samples.md"
    cfg = sample_cfg(top_k=None)
    samples = write_samples(ckpt, cfg, CPU, out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Samples\n")
    assert "step 30" in text and "val loss 4.2500" in text and "top-k off" in text and "seed 1337" in text
    for s in samples:
        assert f"## {s['prompt']}\n" in text
        assert f"**{s['prompt']}**{s['text']}" in text
    assert [s["prompt"] for s in samples] == PROMPTS
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.md"]  # no temp file left
