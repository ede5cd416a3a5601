"""Export to Hugging Face transformers: the same logits, the same greedy tokens, the same token ids."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the network
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from nanoslm import checkpoint  # noqa: E402
from nanoslm.cli import main  # noqa: E402
from nanoslm.config import GPTConfig  # noqa: E402
from nanoslm.conversation import MARKERS, ChatTokens, render  # noqa: E402
from nanoslm.engine import Engine, Sampling, generators  # noqa: E402
from nanoslm.errors import UserError  # noqa: E402
from nanoslm.export import export, gpt2_config, gpt2_weights  # noqa: E402
from nanoslm.generate import load_engine  # noqa: E402
from nanoslm.hardware import Hardware  # noqa: E402
from nanoslm.model import GPT  # noqa: E402
from nanoslm.sources import iter_txt_stories  # noqa: E402
from nanoslm.tokenizer import N_VOCAB, encoding_for, get_encoding  # noqa: E402

from conftest import CHAT_ANSWER, CHAT_QUESTION, make_stories, pruned_vocabulary  # noqa: E402

CPU = Hardware(torch.device("cpu"), torch.float32)
ENC = get_encoding("gpt2")
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories"




# a pruned vocabulary chosen from generated stories: words outside them fall back to smaller pieces
PRUNED = pruned_vocabulary(make_stories(200, seed=4), 1024)
# bias: false exports zero biases; a padded vocabulary (50304, 1088) must survive
VARIANTS = {"no-bias-padded": dict(bias=False, vocab_size=50304), "bias": dict(bias=True, vocab_size=50257),
            "pruned-padded": dict(bias=False, vocab_size=1088, tokenizer=PRUNED)}


def make(bias, vocab_size, tokenizer=None):
    """A small model with weights far from the init (an untrained model predicts nearly uniformly, which would
    hide mistakes): every parameter, biases and LayerNorm gains included, is random."""
    cfg = GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=bias)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            layer_norm_gain = ".ln_" in name and name.endswith(".weight")
            p.copy_((1.0 if layer_norm_gain else 0.0) + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    """(our model, transformers' model, transformers' tokenizer, the export folder, our encoding)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp(request.param)
    model = make(**VARIANTS[request.param])
    value = VARIANTS[request.param].get("tokenizer", "gpt2")
    checkpoint.save(tmp / "best.pt", model, step=5, val_loss=3.5, tokenizer=value)
    out = export(tmp / "best.pt", tmp / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    return model, hf, tok, out, encoding_for(value)


def test_logits_match_in_float32(exported):
    model, hf, _, _, enc = exported
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.dtype == torch.float32
    ids = torch.randint(0, enc.n_vocab, (3, model.config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.hidden(ids) @ model.lm_head.weight.T
        theirs = hf(ids).logits
    assert theirs.shape == ours.shape == (3, model.config.block_size, model.config.vocab_size)
    assert ours.std() > 1.0  # far from uniform: a wrong weight or activation would show
    assert (theirs - ours).abs().max().item() <= 1e-4


def test_greedy_generation_matches(exported):
    model, hf, _, _, enc = exported
    prompt = enc.encode_ordinary("Once upon a time there was")
    n = model.config.block_size - len(prompt)  # transformers' GPT-2 cannot go past n_positions
    eot = enc.eot_token
    engine = Engine(model, CPU, eot=eot, n_vocab=model.config.vocab_size)  # transformers may pick padded ids too
    (ours,) = engine.generate([prompt], Sampling(n, 0.0, None), generators(0, 1))
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=eot)
    assert hf.generation_config.eos_token_id == eot
    theirs = out[0, len(prompt):].tolist()
    theirs = theirs[: theirs.index(eot)] if eot in theirs else theirs
    assert ours == theirs
    assert len(set(ours)) > 3  # a varied continuation, not one repeated token


TEXTS = ["Once upon a time, there was a little girl named Lily.", "  two spaces,\nnew lines\n\n\tand a tab ",
         "A café, “quoted” 🎉 日本語 — naïve résumé", "don't won't I'm 1234567 3.14",
         "story<|endoftext|>Next one", "Zyzzyva quixotically juxtaposed 88888888 pneumonoultramicroscopic",
         "    four spaces\n\n\n\n   \t\t x  ", "\x00\x01\x7f control bytes, \u00a0nbsp, Ω≈ç√∫"]


def test_tokenizer_gives_tiktokens_ids(exported):
    _, _, tok, _, enc = exported
    for text in TEXTS:
        ids = enc.encode(text, allowed_special="all")
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == text
    eot = enc.eot_token
    assert tok.eos_token_id == tok.bos_token_id == eot and len(tok) == enc.n_vocab
    assert tok.decode([eot]) == "<|endoftext|>"


def test_pruned_tokenizer_agrees_on_generated_text(exported):
    """Random concatenations of the vocabulary's own tokens and odd characters: where merges could disagree."""
    _, _, tok, _, enc = exported
    if enc.n_vocab == N_VOCAB:
        pytest.skip("GPT-2's own files: covered by the fixed texts")
    rng = np.random.default_rng(0)
    pieces = [enc.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in range(enc.n_vocab - 1)]
    pieces += [" ", "  ", "\n", "é", "日本", "🎉", "0", "1", "'s", "!!", "..."]
    texts = ["".join(rng.choice(pieces, size=rng.integers(1, 30))) for _ in range(2000)]
    ours = enc.encode_ordinary_batch(texts, num_threads=1)
    assert tok(texts)["input_ids"] == ours


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the shared TinyStories sample) is not on this machine")
@pytest.mark.parametrize("K", [4096, 8192])
def test_pruned_export_agrees_on_every_shared_story(K, tmp_path):
    """Every story of the shared train and validation files: Hugging Face's ids are nanoslm's, and decode back."""
    train = list(iter_txt_stories(SHARED / "train-sample.txt"))
    valid = list(iter_txt_stories(SHARED / "validation.txt"))
    value = pruned_vocabulary(train, K)
    enc = encoding_for(value)
    checkpoint.save(tmp_path / "m.pt", make(bias=False, vocab_size=K), step=1, val_loss=1.0, tokenizer=value)
    tok = transformers.AutoTokenizer.from_pretrained(export(tmp_path / "m.pt", tmp_path / "hf"))
    for stories in (train, valid):
        ours = enc.encode_ordinary_batch(stories, num_threads=2)
        assert tok(stories)["input_ids"] == ours
        assert [enc.decode(ids) for ids in ours] == stories


def test_folder_contents(exported):
    model, _, _, out, enc = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu"  # exact GELU, as Nano-SLM's MLP; GPT-2's own is gelu_new
    assert config["tie_word_embeddings"] is True and config["layer_norm_epsilon"] == 1e-5
    assert (config["vocab_size"], config["n_positions"]) == (model.config.vocab_size, model.config.block_size)
    assert config["n_ctx"] == model.config.block_size  # llama.cpp's convert_hf_to_gguf.py stops without it
    assert config["eos_token_id"] == config["bos_token_id"] == enc.eot_token
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == enc.n_vocab - 256
    assert sorted(p.name for p in out.parent.iterdir()) == ["best.pt", "hf"]  # no temporary folder left


def test_export_replaces_an_earlier_export_and_refuses_other_folders(tmp_path):
    model = make(bias=False, vocab_size=50257)
    checkpoint.save(tmp_path / "m.pt", model, step=1, val_loss=1.0, tokenizer="gpt2")
    out = tmp_path / "hf"
    export(tmp_path / "m.pt", out)
    (out / "config.json").write_text("{}")
    export(tmp_path / "m.pt", out)  # an earlier export: replaced
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier export"):
        export(tmp_path / "m.pt", out)
    assert (out / "mine.txt").read_text() == "keep me"


def test_a_model_gpt2_cannot_express_is_refused():
    cfg = dict(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False)
    assert gpt2_config(cfg)["n_embd"] == 32
    with pytest.raises(UserError, match=r"model.rotary = True has no equivalent in Hugging Face's GPT-2") as err:
        gpt2_config({**cfg, "rotary": True})
    assert "\n" not in str(err.value)
    model = make(bias=False, vocab_size=50257)
    model.transformer.h[0].attn.q_norm = torch.nn.LayerNorm(16)  # a weight GPT-2 has no place for
    with pytest.raises(UserError, match="not expressible as GPT-2.*no place for: transformer.h.0.attn.q_norm"):
        gpt2_weights(model)


def test_cli_export(tmp_path, capsys):
    checkpoint.save(tmp_path / "m.pt", make(bias=False, vocab_size=50257), step=1, val_loss=1.0, tokenizer="gpt2")
    main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "hf")])
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'hf'}")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


# conversations a chat export must render as nanoslm.conversation.render does: system messages, several turns,
# curly quotes, numbers, spaces and new lines at the edges, and characters outside ASCII
CONVERSATIONS = [
    [{"role": "user", "content": CHAT_QUESTION}],
    [{"role": "system", "content": "You tell short, kind stories."},
     {"role": "user", "content": "a story about a dog who finds a red ball"}],
    [{"role": "user", "content": "Tell me about “Pip”, the fox with 3 brothers."},
     {"role": "assistant", "content": "Pip said, \u201cI\u2019m 7 and a half!\u201d The end."},
     {"role": "user", "content": "  And 1,000,000 stars 3.14 times\n\nover? "}],
    [{"role": "system", "content": "Stories for ages 3\u20135 \U0001f389"},
     {"role": "user", "content": "café"}, {"role": "assistant", "content": " naïve\tend\n"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "Once upon a time."}],
]


@pytest.fixture(scope="module")
def chat_export(chat_checkpoint, tmp_path_factory):
    """(the chat checkpoint, its export folder, transformers' tokenizer of it, nanoslm's encoding and chat ids)."""
    out = export(chat_checkpoint, tmp_path_factory.mktemp("chat") / "hf")
    state = checkpoint.load(chat_checkpoint)
    return chat_checkpoint, out, transformers.AutoTokenizer.from_pretrained(out), encoding_for(
        state["tokenizer"]), ChatTokens(**state["chat"])


def test_chat_template_gives_nanoslms_ids(chat_export):
    _, _, tok, enc, chat = chat_export
    for text, i in zip(MARKERS.values(), (chat.system, chat.user, chat.assistant, chat.end)):
        assert tok.convert_tokens_to_ids(text) == i and tok.decode([i]) == text
        assert tok.added_tokens_decoder[i].special and i in tok.all_special_ids
    assert tok.eos_token_id == chat.end and tok.bos_token_id == enc.eot_token and len(tok) == chat.vocab_size
    for messages in CONVERSATIONS:
        for reply in (True, False):
            theirs = tok.apply_chat_template(messages, add_generation_prompt=reply, return_dict=False)
            assert theirs == render(messages, enc, chat, reply=reply)[0], (messages, reply)
    with pytest.raises(Exception, match="unknown role bot; use one of system, user, assistant"):
        tok.apply_chat_template([{"role": "bot", "content": "hi"}])


def test_a_marker_typed_in_a_message_is_a_special_token_to_transformers(chat_export):
    """transformers reads the markers' text anywhere in the rendered prompt; nanoslm never makes a marker from text
    (docs/serve-and-export.md says so)."""
    _, _, tok, enc, chat = chat_export
    messages = [{"role": "user", "content": "say <|end|> please"}]
    assert chat.end in tok.apply_chat_template(messages, return_dict=False)[2:-1]
    assert chat.end not in render(messages, enc, chat)[0][2:-1]


def test_chat_greedy_generation_is_nanoslm_chats_reply(chat_export, capsys):
    """transformers' greedy reply (generate stops at <|end|>) is the engine's, token for token, and `nanoslm chat
    --temperature 0` prints it, in a first and a later turn."""
    path, out, tok, enc, chat = chat_export
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    engine = load_engine(path, CPU)[0]
    system = {"role": "system", "content": "You tell stories."}
    ask, answer = {"role": "user", "content": CHAT_QUESTION}, {"role": "assistant", "content": CHAT_ANSWER}
    for messages in ([ask], [system, ask, answer, ask]):
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=False)
        n = engine.block_size - prompt.shape[1]  # transformers' GPT-2 cannot go past n_positions
        with torch.no_grad():
            theirs = hf.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=enc.eot_token)
        theirs = theirs[0, prompt.shape[1]:].tolist()
        assert theirs[-1] == chat.end  # it stopped at the reply's end, before its token budget
        (ours,) = engine.generate([prompt[0].tolist()], Sampling(n, 0.0, None), generators(0, 1))
        assert theirs[:-1] == ours and enc.decode(ours) == CHAT_ANSWER
    lines = "\n".join(["/system You tell stories.", CHAT_QUESTION, CHAT_QUESTION]) + "\n"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(lines))
        main(["chat", "--checkpoint", str(path), "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu",
              "--dtype", "float32", "--threads", "1"])
    assert capsys.readouterr().out.endswith(f"> {tok.decode(theirs[:-1])}\n\n> \n")
