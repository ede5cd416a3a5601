"""The GGUF file, checked by llama.cpp itself (llama-cpp-python builds it from source): llama.cpp reads our ids from
every text and continues a prompt with `nanoslm generate --temperature 0 --dtype float32`'s tokens."""

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoslm import checkpoint, gguf_export
from nanoslm.cli import main
from nanoslm.config import GPTConfig, Sampling
from nanoslm.conversation import MARKERS, ChatTokens, render
from nanoslm.errors import UserError
from nanoslm.generate import load_engine
from nanoslm.gguf_export import export_gguf
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.sources import iter_txt_stories
from nanoslm.tokenizer import N_VOCAB, encoding_for

from conftest import CHAT_ANSWER, CHAT_QUESTION, REPO, make_stories, pruned_vocabulary

try:
    import llama_cpp
except ImportError as err:  # in CI (`make test` installs the test extra) a missing llama.cpp fails, never skips
    if os.environ.get("CI"):
        raise
    pytest.skip(f"llama-cpp-python is not installed ({err}): pip install -e '.[test]'", allow_module_level=True)

CPU32 = Hardware(torch.device("cpu"), torch.float32)
SHARED = REPO / ".." / "shared" / "data" / "tinystories"
PROMPT = "Once upon a time, there was a little"




PRUNED = pruned_vocabulary(make_stories(200, seed=4), 1024)
# ci: params-ci.yaml's model (GPT-2's vocabulary, no biases: zeros are written); pruned: 1,024 ids padded to 1,088
# (the GGUF keeps only the tokenizer's rows), with biases
MODELS = {"ci": dict(bias=False, vocab_size=50257, tokenizer="gpt2"),
          "pruned": dict(bias=True, vocab_size=1088, tokenizer=PRUNED)}
BLOCK = 64
STORY = ("Once upon a time, there was a little fox named Pip. Pip lived under a big oak tree with 3 brothers. "
         "One day, Pip found a shiny blue stone. \u201cLook!\u201d he said. His mother smiled and said, "
         "\u201cThat is a magic stone.\u201d Pip kept it safe, and every night it glowed like a tiny moon. The end.")


def make(bias, vocab_size, tokenizer):
    cfg = GPTConfig(block_size=BLOCK, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=bias)
    torch.manual_seed(0)
    return GPT(cfg)


def random_model(**spec):
    """Every parameter random and far from the init (biases and LayerNorm gains included): a wrong weight shows."""
    model = make(**spec).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if ".ln_" in name and name.endswith(".weight") else 0.0) + 0.3 * torch.randn_like(p))
    return model


def reciting_model(**spec):
    """A model trained (80 steps, a few seconds) to recite STORY: sure of each next token, as a trained model mostly
    is. Its greedy picks win by 2 logits or more, where llama.cpp's float16 GELU table and KV cache move a logit by
    ~0.05; a random model's top two logits come within 0.003 of each other in 60 steps, which a CPU's rounding could
    flip either way. The loss is a softmax over the story's own tokens, so GPT-2's 50,257-row head costs nothing."""
    model = make(**spec)
    enc = encoding_for(spec["tokenizer"])
    ids = torch.tensor([enc.eot_token, *enc.encode_ordinary(STORY), enc.eot_token])
    used = ids.unique()
    index = torch.zeros(spec["vocab_size"], dtype=torch.long)
    index[used] = torch.arange(len(used))
    starts = torch.linspace(0, len(ids) - BLOCK - 1, 12).long()
    x, y = (torch.stack([ids[s + k: s + k + BLOCK] for s in starts]) for k in (0, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(80):
        logits = model.hidden(x) @ model.transformer.wte.weight[used].T
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), index[y].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@contextmanager
def no_weight_repacking():
    """llama.cpp without its CPU weight repacking (use_extra_bufts = false; llama-cli's --no-repack). On an AMX CPU
    llama.cpp's repacked q8_0 matmul crashed unless repacking was off (the issue's report; a llama.cpp bug, f32 and
    f16 ran): the files are checked, not that bug. (2026-12-05 host: AMD EPYC without AMX, every type ran.)"""
    lib = llama_cpp.llama_cpp  # what llama_cpp.Llama calls for its model parameters
    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def load(path, **kw):
    with no_weight_repacking():
        return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_threads=1, n_threads_batch=1, verbose=False,
                               **kw)


def export_all(model, value, folder: Path) -> dict[str, Path]:
    checkpoint.save(folder / "best.pt", model, step=7, val_loss=2.5, tokenizer=value)
    return {t: export_gguf(folder / "best.pt", folder / f"model-{t}.gguf", t) for t in gguf_export.GGUF_TYPES}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """(name, the reciting model's checkpoint, our encoding, {gguf type: its GGUF file})."""
    tmp = tmp_path_factory.mktemp(request.param)
    spec = MODELS[request.param]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before conftest's one_thread, which is per test
    try:
        files = export_all(reciting_model(**spec), spec["tokenizer"], tmp)
    finally:
        torch.set_num_threads(threads)
    return request.param, tmp / "best.pt", encoding_for(spec["tokenizer"]), files


TEXTS = ["Once upon a time, there was a little girl named Lily.\n\nShe had a red ball.",
         "\u201cThank you,\u201d said Tom. \u2018It\u2019s mine!\u2019 \u2014 she didn\u2019t know\u2026",
         "Zyzzyva quixotically juxtaposed pneumonoultramicroscopic silicovolcanoconiosis",
         "1234567 3.14 1,000,000 42nd 2026-12-05 007",
         "line one\n\n\nline four\n \n\t\ttabs  and   spaces   \n\n",
         "don't won't I'm we'll they've she'd IT'S",
         "A café, naïve résumé 🎉 日本語 Ω≈ç√∫ \u00a0nbsp",
         "story<|endoftext|>Next one", " leading space", "", "\n"]


def test_llama_cpp_reads_our_ids_from_every_text(exported):
    """A prompt typed in llama.cpp, ollama or LM Studio becomes the ids the model was trained on, and back."""
    name, _, enc, files = exported
    llm = load(files["f16"], vocab_only=True)
    texts = list(TEXTS)
    if name == "pruned":  # the vocabulary's own pieces, glued at random: where a pruned merge list could go wrong
        rng = np.random.default_rng(0)
        pieces = [enc.decode_single_token_bytes(i).decode("utf-8", "replace") for i in range(enc.n_vocab - 1)]
        pieces += [" ", "  ", "\n", "\n\n", "é", "日本", "🎉", "0", "1", "'s", "!!", "\u201c", "\u2019"]
        texts += ["".join(rng.choice(pieces, size=rng.integers(1, 30))) for _ in range(500)]
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, repr(text)
        assert llm.detokenize(ids) == text.encode(), repr(text)
    for text in TEXTS:  # <|endoftext|> as the special token, as nanoslm's training files separate stories
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == enc.encode(text, allowed_special="all")
    assert llm.token_eos() == llm.token_bos() == enc.eot_token and llm.n_vocab() == enc.n_vocab


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the shared TinyStories sample) is not on this machine")
@pytest.mark.parametrize("K", [8192, N_VOCAB])
def test_llama_cpp_reads_our_ids_from_every_validation_story(K, tmp_path):
    """Every shared validation story: with the default pruned vocabulary (chosen as tokenize does) and GPT-2's."""
    value = pruned_vocabulary(list(iter_txt_stories(SHARED / "train-sample.txt")), K)
    checkpoint.save(tmp_path / "m.pt", make(bias=False, vocab_size=K, tokenizer=value), step=1, val_loss=1.0,
                    tokenizer=value)
    llm = load(export_gguf(tmp_path / "m.pt", tmp_path / "m.gguf"), vocab_only=True)
    stories = list(iter_txt_stories(SHARED / "validation.txt"))
    ours = encoding_for(value).encode_ordinary_batch(stories, num_threads=2)
    assert [llm.tokenize(s.encode(), add_bos=False, special=False) for s in stories] == ours


GREEDY = Sampling(max_new_tokens=BLOCK, temperature=0.0, top_k=None, top_p=1.0)


def greedy_llama_cpp(llm, prompt: list[int], n: int, eot: int) -> list[int]:
    """llama.cpp's own greedy sampler (temperature 0), without the end-of-text token that ends the story."""
    out = []
    for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == eot or len(out) == n:
            break
        out.append(token)
    return out


def greedy_ours(checkpoint_path, prompt: list[int], n: int) -> list[int]:
    engine, _, _ = load_engine(checkpoint_path, CPU32)
    return engine.generate([prompt], dataclasses.replace(GREEDY, max_new_tokens=n), [torch.Generator()])[0]


@pytest.mark.parametrize("gguf_type", ["f32", "f16"])
def test_greedy_story_is_the_one_nanoslm_generate_writes(exported, gguf_type, capsys):
    """`nanoslm generate --temperature 0 --dtype float32` and llama.cpp on the GGUF file write the same story."""
    _, path, enc, files = exported
    prompt = enc.encode_ordinary(PROMPT)
    n = BLOCK - len(prompt)  # the whole context: llama.cpp's GPT-2 cannot go past its learned positions
    ours = greedy_ours(path, prompt, n)
    theirs = greedy_llama_cpp(load(files[gguf_type]), prompt, n, enc.eot_token)
    assert theirs == ours
    assert len(ours) > 20 and len(set(ours)) > 15  # a long, varied story, not one repeated token
    main(["generate", PROMPT, "--checkpoint", str(path), "--temperature", "0", "--dtype", "float32", "--device",
          "cpu", "--max-new-tokens", str(n), "--seed", "0", "--threads", "1"])
    assert capsys.readouterr().out == PROMPT + enc.decode(theirs) + "\n"


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_of_random_weights_match(name, tmp_path):
    """Every weight and bias random (a misplaced one would show): llama.cpp's logits along a random text are ours
    within its float16 rounding, in f32 and f16 files."""
    spec = MODELS[name]
    model = random_model(**spec)
    files = export_all(model, spec["tokenizer"], tmp_path)
    n_vocab = encoding_for(spec["tokenizer"]).n_vocab
    ids = torch.randint(0, n_vocab, (BLOCK,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ours = (model.hidden(torch.tensor([ids])) @ model.lm_head.weight.T)[0, :, :n_vocab].numpy()
    assert ours.std() > 1.0  # far from uniform
    for t in ("f32", "f16"):
        llm = load(files[t], logits_all=True)
        llm.eval(ids)
        theirs = np.asarray(llm.scores[:BLOCK])
        assert np.abs(theirs - ours).max() < 0.15, t  # measured 0.02-0.05 (2026-12-05); a wrong weight gives ~1


def test_q8_0_agreement(exported, record_property):
    """q8_0 rounds every matrix to 8 bits, so it may pick another token where two are close: along our greedy
    story, llama.cpp's q8_0 picks our next token nearly always (the rate is reported, and recorded in JUnit XML)."""
    name, path, enc, files = exported
    prompt = enc.encode_ordinary(PROMPT)
    ours = greedy_ours(path, prompt, BLOCK - len(prompt))
    llm = load(files["q8_0"], logits_all=True)
    llm.eval(prompt + ours[:-1])
    picks = np.asarray(llm.scores[len(prompt) - 1: len(prompt) + len(ours) - 1]).argmax(-1).tolist()
    same = sum(a == b for a, b in zip(picks, ours)) / len(ours)
    free = greedy_llama_cpp(load(files["q8_0"]), prompt, len(ours), enc.eot_token)
    prefix = next((i for i, (a, b) in enumerate(zip(free, ours)) if a != b), min(len(free), len(ours)))
    record_property(f"q8_0_next_token_agreement_{name}", same)
    print(f"\n{name}: q8_0 picks our next token at {same:.1%} of {len(ours)} steps; its own greedy story equals "
          f"ours for {prefix} of {len(ours)} tokens")
    assert same >= 0.9


def test_file_says_what_it_is(exported):
    """llama.cpp, ollama and LM Studio show its name and need its context length, its end-of-text and tokenizer."""
    import gguf

    name, _, enc, files = exported
    for t, path in files.items():
        meta = load(path, vocab_only=True).metadata  # as llama.cpp reads it
        assert meta["general.architecture"] == "gpt2" and meta["general.name"].startswith("Nano-SLM TinyStories")
        assert meta["gpt2.context_length"] == str(BLOCK) and meta["tokenizer.ggml.pre"] == "gpt-2"
        assert meta["tokenizer.ggml.eos_token_id"] == str(enc.eot_token)
        assert meta["general.file_type"] == str({"f32": 0, "f16": 1, "q8_0": 7}[t])
        if name == "pruned":  # GGUFReader reads GPT-2's 50,257 tokens slowly (3 s a file)
            reader = gguf.GGUFReader(path)
            assert reader.get_field("tokenizer.ggml.tokens").contents(enc.eot_token) == "<|endoftext|>"
            types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
            assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == t.upper()
            assert types["position_embd.weight"] == types["output_norm.bias"] == "F32"
    sizes = {t: p.stat().st_size for t, p in files.items()}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_a_model_gguf_cannot_express_is_refused_in_one_line(tmp_path, monkeypatch):
    model = make(**MODELS["ci"])
    checkpoint.save(tmp_path / "m.pt", model, step=1, val_loss=1.0, tokenizer="gpt2")
    Rotary = dataclasses.make_dataclass("Rotary", [*((f.name, f.type) for f in dataclasses.fields(GPTConfig)),
                                                   ("rotary", bool)])
    loaded = checkpoint.load_model(tmp_path / "m.pt")
    loaded[0].config = Rotary(**dataclasses.asdict(model.config), rotary=True)
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loaded)
    with pytest.raises(UserError, match="model.rotary = True has no equivalent") as err:
        export_gguf(tmp_path / "m.pt", tmp_path / "m.gguf")
    assert "\n" not in str(err.value) and not (tmp_path / "m.gguf").exists()


def test_only_an_earlier_gguf_file_is_replaced(tmp_path):
    checkpoint.save(tmp_path / "m.pt", make(**MODELS["pruned"]), step=1, val_loss=1.0, tokenizer=PRUNED)
    out = export_gguf(tmp_path / "m.pt", tmp_path / "m.gguf", "q8_0")
    export_gguf(tmp_path / "m.pt", out, "f32")  # an earlier GGUF file: replaced
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a GGUF file"):
        export_gguf(tmp_path / "m.pt", tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.pt", "notes.txt"]  # no temporary file left


def test_cli_export_writes_the_gguf_beside_the_folder(tmp_path, capsys):
    checkpoint.save(tmp_path / "m.pt", make(**MODELS["pruned"]), step=1, val_loss=1.0, tokenizer=PRUNED)
    main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "hf")])
    assert f"wrote {tmp_path / 'model.gguf'} (f16)" in capsys.readouterr().out
    main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "hf"), "--gguf",
          str(tmp_path / "q.gguf"), "--gguf-type", "q8_0"])
    assert (tmp_path / "q.gguf").stat().st_size < (tmp_path / "model.gguf").stat().st_size


CONVERSATIONS = [
    [{"role": "user", "content": CHAT_QUESTION}],
    [{"role": "system", "content": "You tell short, kind stories."},
     {"role": "user", "content": "Tell me about \u201cPip\u201d, the fox with 3 brothers."},
     {"role": "assistant", "content": "Pip said, \u201cI\u2019m 7 and a half!\u201d The end."},
     {"role": "user", "content": "  And 1,000,000 stars 3.14 times\n\nover? "}],
]


@pytest.fixture(scope="module")
def chat_gguf(chat_checkpoint, tmp_path_factory):
    """(the chat checkpoint, its f32 GGUF file, nanoslm's encoding and chat ids)."""
    path = export_gguf(chat_checkpoint, tmp_path_factory.mktemp("chat") / "chat.gguf", "f32")
    state = checkpoint.load(chat_checkpoint)
    return chat_checkpoint, path, encoding_for(state["tokenizer"]), ChatTokens(**state["chat"])


def template_prompt(llm, messages) -> str:
    """The file's chat template rendered as llama-cpp-python's create_chat_completion renders it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")
    return template(messages=messages).prompt


def test_llama_cpp_reads_a_conversation_as_nanoslm_renders_it(chat_gguf):
    _, path, enc, chat = chat_gguf
    llm = load(path, vocab_only=True)
    for messages in CONVERSATIONS:
        prompt = template_prompt(llm, messages).encode()
        assert llm.tokenize(prompt, add_bos=False, special=True) == render(messages, enc, chat, reply=True)[0]
    for text, i in zip(MARKERS.values(), (chat.system, chat.user, chat.assistant, chat.end)):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == [i]  # the markers, where special tokens
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == enc.encode_ordinary(text)  # are parsed
    meta = llm.metadata
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == str(chat.end)
    assert llm.n_vocab() == chat.vocab_size and llm.token_bos() == enc.eot_token


def test_llama_cpp_greedy_reply_is_the_engines(chat_gguf):
    """llama.cpp's greedy tokens are the engine's and end at <|end|>; create_chat_completion, on the file's own
    template, stops there and answers as `nanoslm chat --temperature 0` does."""
    path, gguf_path, enc, chat = chat_gguf
    llm = load(gguf_path)
    for messages in (CONVERSATIONS[0], [*CONVERSATIONS[0], {"role": "assistant", "content": CHAT_ANSWER},
                                        *CONVERSATIONS[0]]):
        prompt = render(messages, enc, chat, reply=True)[0]
        n = BLOCK - len(prompt)
        ours = greedy_ours(path, prompt, n)
        assert enc.decode(ours) == CHAT_ANSWER
        assert greedy_llama_cpp(llm, prompt, n, chat.end) == ours
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, repeat_penalty=1.0, max_tokens=n)
        assert reply["choices"][0]["message"]["content"] == CHAT_ANSWER
        assert reply["choices"][0]["finish_reason"] == "stop"  # at the file's end of sequence, not max_tokens
