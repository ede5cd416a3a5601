"""The GGUF file: a checkpoint as one GPT-2 `.gguf` that llama.cpp, ollama and LM Studio run, written offline with
the `gguf` package (the llama.cpp project's own writer).

    nanoslm export --checkpoint models/best.pt --out models/hf          # also writes models/model.gguf (f16)
    nanoslm export ... --gguf-type q8_0                                  # or f32

What llama.cpp needs is written directly, not converted from the transformers folder: llama.cpp's converter
identifies a BPE pre-tokenizer by hashing the ids of a fixed text, which no pruned vocabulary can match. Here the
file names GPT-2's pre-tokenizer ("gpt-2", the r50k pattern nanoslm.tokenizer uses), the vocabulary's tokens in
GPT-2's byte-level text, its merges (GPT-2's, in GPT-2's order, as nanoslm.export's merges.txt) and <|endoftext|>
as a control token that ends a story. The weights are nanoslm.export's GPT-2 weights (so the same models are
refused, in one line), under llama.cpp's GPT-2 tensor names, with three differences:
- Nano-SLM's Linear weights are stored as they are (GGUF keeps them (out, in), as torch does), not as Conv1D;
- the embedding keeps only the tokenizer's ids: padded rows past them are never picked by nanoslm's engine, so
  llama.cpp cannot pick them either;
- matrices take the chosen type (f32, f16, q8_0); norms, biases and the position embedding stay f32, as
  llama.cpp's converter keeps them.
llama.cpp computes GPT-2's GELU as the tanh approximation through a float16 table (Nano-SLM: the exact one) and
keeps its KV cache in float16, so even an f32 file's logits differ from ours (< 0.01 on a trained model,
2026-12-05): tests/test_gguf.py checks ids, greedy tokens and logits within a tolerance, not bits.
llama.cpp's GPT-2 has learned positions and no sliding window: run it with a context of at most block_size tokens.

A chat checkpoint's file also holds its four role markers after the BPE ids, as control tokens (llama.cpp reads
their text as them only where it parses special tokens, as in a chat template's output), nanoslm.chat_template's
template as tokenizer.chat_template, and <|end|> as end of sequence and end of turn, so a reply stops there
(<|endoftext|>, a control token llama.cpp knows by name, still ends generation too).
"""

import dataclasses
from pathlib import Path

import gguf
import numpy as np

from . import gpt2, tokenizer
from .atomic import atomic_path
from .errors import UserError
from .chat_template import CHAT_TEMPLATE
from .export import CONV1D, byte_level, chat_tokens, gpt2_config, gpt2_weights, load_for_export

GGUF_TYPES = ("f32", "f16", "q8_0")
DEFAULT_GGUF_TYPE = "f16"
MAGIC = b"GGUF"


def export_gguf(checkpoint_path, out_path, gguf_type: str = DEFAULT_GGUF_TYPE) -> Path:
    """Write the checkpoint as a GPT-2 GGUF file at out_path (replacing an earlier GGUF file there)."""
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    out = Path(out_path)
    if out.is_dir() or (out.is_file() and not _is_gguf(out)):
        raise UserError(f"{out}: exists and is not a GGUF file; choose a new path for the GGUF file")
    model, state, enc = load_for_export(checkpoint_path)
    value, chat = state["tokenizer"], chat_tokens(state)
    cfg = model.config
    gpt2_config(dataclasses.asdict(cfg), checkpoint_path, eot=enc.eot_token)  # refuses what GPT-2 cannot express
    tokens, types, merges = bpe_vocabulary(value, enc)
    if chat is not None:
        markers = chat.texts()  # ids right after the BPE ids (ChatTokens.after)
        tokens += [markers[i] for i in sorted(markers)]
        types += [gguf.TokenType.CONTROL] * len(markers)
    tensors = gguf_tensors(gpt2_weights(model, checkpoint_path), cfg.n_layer, len(tokens))

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
        w.add_name(model_name(model, value))
        w.add_description(f"Nano-SLM: a GPT-2-architecture story model trained from scratch on TinyStories; "
                          f"{Path(checkpoint_path).name}, step {state.get('step')}, "
                          f"validation loss {_number(state.get('val_loss'))}; {tokenizer.label(value)} vocabulary")
        w.add_license("MIT")
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(1e-5)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(enc.eot_token)  # GPT-2's only special token, as config.json's bos/eos
        w.add_eos_token_id(enc.eot_token if chat is None else chat.end)
        if chat is not None:
            w.add_eot_token_id(chat.end)
            w.add_chat_template(CHAT_TEMPLATE)
        w.add_add_bos_token(False)  # our prompts start with their first word, as in training
        w.add_add_eos_token(False)
        for name, tensor in tensors.items():
            matrix = tensor.ndim == 2 and name != "position_embd.weight"
            t = qtype if matrix else gguf.GGMLQuantizationType.F32
            try:
                data = gguf.quants.quantize(tensor, t)
            except gguf.QuantError:  # q8_0 needs rows of a multiple of 32 values: f16, as llama.cpp's converter
                t, data = gguf.GGMLQuantizationType.F16, tensor.astype(np.float16)
            w.add_tensor(name, data, raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def bpe_vocabulary(value: tokenizer.Vocabulary, enc) -> tuple[list[str], list[int], list[str]]:
    """The vocabulary as GGUF holds it: each id's token in GPT-2's byte-level text, each id's type (normal, or
    control for <|endoftext|>), and the merges "left right" in priority order (a token's merge ranks as its id)."""
    n = enc.n_vocab
    tokens = [byte_level(enc.decode_single_token_bytes(i)) if i != enc.eot_token else gpt2.EOT_TEXT
              for i in range(n)]
    types = [gguf.TokenType.CONTROL if i == enc.eot_token else gguf.TokenType.NORMAL for i in range(n)]
    ranks = value["ranks"] if isinstance(value, dict) else range(gpt2.N_VOCAB - 1)
    new_id = {r: i for i, r in enumerate(ranks)}
    pairs = tokenizer.gpt2_merges()
    merges = []
    for r in ranks:
        if r >= gpt2.N_BYTES:
            left, right = pairs[r - gpt2.N_BYTES]
            if left not in new_id or right not in new_id:
                raise UserError(f"tokenizer {tokenizer.label(value)}: GPT-2 rank {r} is kept without the tokens it "
                                f"is merged from; rerun: dvc repro --force tokenize")
            merges.append(f"{tokens[new_id[left]]} {tokens[new_id[right]]}")
    return tokens, types, merges


def gguf_tensors(weights: dict, n_layer: int, n_vocab: int) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's weights (nanoslm.export.gpt2_weights) under llama.cpp's GPT-2 names, as float32 arrays:
    Conv1D weights back in (out, in) order, the token embedding cut to the tokenizer's n_vocab ids (a chat
    checkpoint's markers included)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layer)
    out = {}
    for name, tensor in weights.items():
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:  # gpt2_weights has checked every name and shape: this is a bug, not a user's model
            raise AssertionError(f"no GGUF name for GPT-2 weight {name}")
        if name.endswith(".weight") and name.removesuffix(".weight").endswith(CONV1D):
            tensor = tensor.t()
        if name == "transformer.wte.weight":
            tensor = tensor[:n_vocab]
        out[new] = tensor.contiguous().numpy().astype(np.float32, copy=False)
    return out


def model_name(model, value: tokenizer.Vocabulary) -> str:
    """general.name, shown by llama.cpp, ollama and LM Studio: e.g. "Nano-SLM TinyStories 4x192 (8192-token vocab)"."""
    cfg = model.config
    return (f"Nano-SLM TinyStories {cfg.n_layer}x{cfg.n_embd} "
            f"({tokenizer.vocab_size_of(value)}-token vocab, {model.num_params() / 1e6:.1f}M params)")


def _number(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC
