"""The generation engine: the KV-cache path gives exactly the plain path's tokens; sampling semantics."""

import math

import pytest
import torch

from nanoslm.config import GPTConfig
from nanoslm.engine import CachePass, Engine, KVCache, Sampling, generators
from nanoslm.errors import UserError
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.tokenizer import EOT

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
PROMPT = [7454, 2402, 257, 640]  # "Once upon a time"
# different lengths, one longer than block_size, one empty
PROMPTS = [PROMPT, [11], list(range(1000, 1000 + 2 * CFG.block_size + 3)), [], list(range(500, 500 + CFG.block_size))]


def make(cfg=CFG, seed=0, scale=1.0):
    """A random model; scale > 1 makes its predictions far from uniform (untrained ones are nearly uniform)."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def gen(model, prompts, sampling, seed=0, use_cache=True, eot=EOT):
    return Engine(model, CPU, eot=eot).generate(prompts, sampling, generators(seed, len(prompts)), use_cache)


def argmax_loop(model, prompt, n):
    """Greedy decoding by hand: the whole (cropped) context every step, logits from hidden states and the head."""
    ids, new = list(prompt) or [EOT], []
    with torch.no_grad():
        for _ in range(n):
            context = torch.tensor([ids[-CFG.block_size:]])
            next_id = int((model.hidden(context)[0, -1] @ model.transformer.wte.weight.T).argmax())
            if next_id == EOT:
                break
            new.append(next_id)
            ids.append(next_id)
    return new


class Scripted(torch.nn.Module):
    """A stand-in model: the logits of its next token are `logits(call number, last token)`; records its inputs."""

    def __init__(self, logits_fn, vocab_size=CFG.vocab_size):
        super().__init__()
        self.config = GPTConfig(**{**CFG.__dict__, "vocab_size": vocab_size})
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # the engine reads the device and dtype from a parameter
        self.logits_fn, self.seen = logits_fn, []

    def forward(self, idx, kv_cache=None):
        assert kv_cache is None, "run scripted models with use_cache=False"
        self.seen.append(idx.clone())
        return torch.stack([self.logits_fn(len(self.seen) - 1, row[-1].item()) for row in idx])


def one_hot(token, vocab=CFG.vocab_size):
    logits = torch.full((vocab,), -1e9)
    logits[token] = 0.0
    return logits


SETTINGS = [Sampling(40, 0.0, None), Sampling(40, 1.0, None), Sampling(40, 0.8, 50), Sampling(40, 1.2, None, 0.9),
            Sampling(40, 1.0, 100, 0.5)]


@pytest.mark.parametrize("sampling", SETTINGS, ids=lambda s: f"t{s.temperature}-k{s.top_k}-p{s.top_p}")
def test_cache_gives_exactly_the_plain_paths_tokens(sampling, capsys):
    """40 new tokens after prompts of 0 to 35 tokens: every row crosses block_size (16) while decoding."""
    model = make(scale=8.0)
    cached = gen(model, PROMPTS, sampling, seed=3)
    plain = gen(model, PROMPTS, sampling, seed=3, use_cache=False)
    assert cached == plain
    assert [len(x) for x in cached] == [40] * len(PROMPTS)
    one_by_one = [gen(model, [p], sampling, seed=3 + i)[0] for i, p in enumerate(PROMPTS)]
    assert cached == one_by_one  # row i of a batch = the same prompt alone with seed + i
    if sampling.temperature == 0:
        assert cached == [argmax_loop(model, p, 40) for p in PROMPTS]
    else:
        assert cached != [argmax_loop(model, p, 40) for p in PROMPTS]


def test_rows_that_stop_early_leave_the_batch(capsys):
    """A row that hits end-of-text mid-batch drops out of the cache; the others go on unchanged."""
    model = make(scale=8.0)
    greedy = Sampling(30, 0.0, None)
    prompts = [p for p in PROMPTS if p]  # an empty prompt would start from the stop id
    free = gen(model, prompts, greedy, eot=-1)  # eot=-1: no id stops
    stop = free[0][5]  # row 0 stops at its 6th token at the latest; other rows may too, wherever they make it
    cached = gen(model, prompts, greedy, eot=stop)
    assert cached == gen(model, prompts, greedy, eot=stop, use_cache=False)
    assert cached[0] == free[0][: free[0].index(stop)] and len(cached[0]) <= 5
    for row, full in zip(cached, free):
        assert row == (full[: full.index(stop)] if stop in full else full)
    assert any(len(row) == 30 for row in cached)


def test_same_seed_same_sample_different_seed_different_sample():
    model = make()
    a = gen(model, [PROMPT], Sampling(12, 1.0, None), seed=5)
    assert a == gen(model, [PROMPT], Sampling(12, 1.0, None), seed=5)
    assert a != gen(model, [PROMPT], Sampling(12, 1.0, None), seed=6)  # nearly uniform over 50,257 ids


def test_cache_logits_match_the_full_forward_pass():
    """Prefill, a chunk of several tokens on top (the general mask), then single tokens: each pass's last
    logits equal the plain forward pass over everything so far."""
    model = make(scale=4.0)
    ids = torch.tensor([list(range(300, 300 + CFG.block_size))])
    cache = KVCache(model, [0])
    with torch.no_grad():
        steps = [(0, 5, cache.prefill(0, 5)), (5, 9, CachePass(cache.k, cache.v, [5], 4))]
        cache.lengths = [9]
        for t in range(9, CFG.block_size):
            steps.append((t, t + 1, cache.decode()))
        for start, end, step in steps:
            got = model(ids[:, start:end], kv_cache=step)
            torch.testing.assert_close(got, model(ids[:, :end]), rtol=1e-5, atol=1e-5)


def test_top_k_1_is_greedy():
    model = make(scale=8.0)
    assert gen(model, [PROMPT], Sampling(10, 0.8, 1), seed=9) == [argmax_loop(model, PROMPT, 10)]


def test_top_k_limits_the_choices():
    model = make()
    with torch.no_grad():
        allowed = set(torch.topk(model(torch.tensor([PROMPT]))[0], 3).indices.tolist())
    firsts = {row[0] for row in gen(model, [PROMPT] * 40, Sampling(1, 2.0, 3))}
    assert firsts <= allowed and len(firsts) > 1


@pytest.mark.parametrize("top_p, expected", [(1.0, {10, 11, 12, 13}), (0.9, {10, 11, 12}), (0.8, {10, 11}),
                                              (0.7, {10, 11}), (0.5, {10}), (0.2, {10})])
def test_top_p_keeps_the_fewest_tokens_that_reach_p(top_p, expected):
    probs = {10: 0.5, 11: 0.3, 12: 0.15, 13: 0.05}  # cumulative: 0.5, 0.8, 0.95, 1.0

    def logits(call, last):
        out = torch.full((CFG.vocab_size,), -1e9)
        for token, p in probs.items():
            out[token] = math.log(p)
        return out

    rows = gen(Scripted(logits), [[1]] * 300, Sampling(1, 1.0, None, top_p), use_cache=False)
    assert {row[0] for row in rows} == expected


def test_stops_at_end_of_text_and_leaves_it_out():
    script = [11, 12, EOT, 13, 14]
    model = Scripted(lambda call, last: one_hot(script[call]))
    assert gen(model, [PROMPT], Sampling(10, 0.0, None), use_cache=False) == [[11, 12]]
    assert len(model.seen) == 3  # no step after end-of-text
    assert model.seen[-1][0].tolist() == PROMPT + [11, 12]
    sampled = Scripted(lambda call, last: one_hot(EOT))  # -1e9 elsewhere: sampling must pick it too
    assert gen(sampled, [PROMPT], Sampling(10, 1.0, 5), use_cache=False) == [[]]


def test_batch_rows_end_independently():
    """Next token = last + 1, except end-of-text after 20: a row started at 17 ends, one at 1 goes on."""
    model = Scripted(lambda call, last: one_hot(EOT if last == 20 else last + 1))
    assert gen(model, [[17], [1]], Sampling(6, 0.0, None), use_cache=False) == [[18, 19, 20], [2, 3, 4, 5, 6, 7]]
    assert [seen.size(0) for seen in model.seen] == [2, 2, 2, 2, 1, 1]  # the finished row is not run again


def test_at_most_max_new_tokens():
    model = make()
    for n in (1, 3, 7):
        assert [len(r) for r in gen(model, [PROMPT, [5]], Sampling(n, 0.0, None))] == [n, n]
        assert [len(r) for r in gen(model, [PROMPT], Sampling(n, 1.0, None))] == [n]
    scripted = Scripted(lambda call, last: one_hot(100 + call))
    assert gen(scripted, [PROMPT], Sampling(4, 0.0, None), use_cache=False) == [[100, 101, 102, 103]]
    assert len(scripted.seen) == 4


def test_prompt_longer_than_the_context_is_cropped_with_a_warning(capsys):
    model = make(scale=8.0)
    long_prompt = list(range(1000, 1000 + 3 * CFG.block_size))
    out = gen(model, [long_prompt], Sampling(6, 0.0, None))
    assert "warning: the prompt has 48 tokens, more than the model's context of 16; using its last 16" in \
        capsys.readouterr().err
    assert out == [argmax_loop(model, long_prompt, 6)]
    assert out == gen(model, [long_prompt[-CFG.block_size:]], Sampling(6, 0.0, None))
    assert capsys.readouterr().err == ""  # a prompt that fits: no warning
    scripted = Scripted(lambda call, last: one_hot(5 + call))
    gen(scripted, [long_prompt], Sampling(5, 0.0, None), use_cache=False)
    assert all(seen.size(1) == CFG.block_size for seen in scripted.seen)
    assert scripted.seen[-1][0].tolist() == (long_prompt + [5, 6, 7, 8])[-CFG.block_size:]


def test_empty_prompt_starts_from_end_of_text():
    model = make(scale=8.0)
    for use_cache in (True, False):
        greedy = Sampling(5, 0.0, None)
        assert gen(model, [[]], greedy, use_cache=use_cache) == gen(model, [[EOT]], greedy)


def test_padded_vocabulary_ids_are_never_picked():
    """A model's vocab may be padded past the tokenizer's 50,257 ids; those ids can't be decoded."""
    model = Scripted(lambda call, last: torch.arange(50304, dtype=torch.float32), vocab_size=50304)
    assert gen(model, [PROMPT], Sampling(1, 0.0, None), use_cache=False, eot=-1) == [[50256]]
    assert all(r[0] < 50257 for r in gen(model, [PROMPT] * 20, Sampling(1, 2.0, None), use_cache=False, eot=-1))


def test_top_k_past_the_model_vocabulary_is_a_one_line_user_error():
    # the other ranges are checked when a Sampling is made (tests/test_config.py); this one needs the model
    with pytest.raises(UserError, match=r"'sample.top_k' must be at most the vocabulary size \(50257\)") as err:
        gen(make(), [PROMPT], Sampling(5, 1.0, CFG.vocab_size + 1))
    assert "\n" not in str(err.value)


def test_bfloat16_casts_the_model_and_generates():
    model = make(scale=8.0)
    engine = Engine(model, Hardware(torch.device("cpu"), torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    (out,) = engine.generate([PROMPT], Sampling(20, 0.0, None), generators(0, 1))
    assert len(out) == 20 and all(0 <= t < 50257 for t in out)


def test_float16_autocast_gives_the_same_tokens_with_and_without_the_cache():
    """float16 runs under autocast (the model stays float32): the cache holds autocast's float16 keys."""
    model = make(scale=8.0)
    engine = Engine(model, Hardware(torch.device("cpu"), torch.float16))
    sampling = Sampling(24, 1.0, None)
    cached = engine.generate(PROMPTS[:2], sampling, generators(0, 2))
    assert cached == engine.generate(PROMPTS[:2], sampling, generators(0, 2), use_cache=False)
    assert next(model.parameters()).dtype == torch.float32 and [len(r) for r in cached] == [24, 24]


def test_a_chat_engine_ends_a_row_at_end_of_reply_as_at_end_of_text():
    """A model pre-trained on stories and conversations ends a story at <|endoftext|> and a reply at <|end|>."""
    model = make(scale=8.0)
    greedy = Sampling(30, 0.0, None)
    (free,) = gen(model, [PROMPTS[1]], greedy, eot=-1)
    first, second = free[3], next(t for t in free if t != free[3])  # two ids the row makes, in some order
    for eot, end in ((first, second), (second, first)):
        (row,) = Engine(model, CPU, eot=eot, end=end).generate([PROMPTS[1]], greedy, generators(0, 1))
        assert row == free[: min(free.index(first), free.index(second))]
