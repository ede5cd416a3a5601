"""The benchmark's result as a readable table."""


def format_table(r: dict) -> str:
    """The result as a readable table."""
    rows = [("phase", "speed", "peak RSS", "notes")]

    def mem(section):
        text = f"{section['peak_rss_gb']:.2f} GB"
        return text + (f" (CUDA {section['peak_cuda_gb']:.2f} GB)" if "peak_cuda_gb" in section else "")

    head = f"nanoslm bench: preset {r['preset']}, {r['device']}"
    if r.get("dtype"):
        head += f", {r['dtype']}"
    head += f", threads: {r['threads']}" if r["device"] == "cpu" else ""
    if "train" in r:
        m, t, ref = r["model"], r["train"], r["reference"]
        head += (f"; {m['params'] / 1e6:.1f}M params ({m['params_non_embedding'] / 1e6:.1f}M outside embeddings), "
                 f"{m['n_layer']}x{m['n_embd']}, block {m['block_size']}, {r['tokens_per_step']:,} tokens/step, "
                 f"{r['steps']} timed steps after {r['warmup_steps']} warm-up")
        rows.append(("train (fast path)", f"{t['tokens_per_sec']:,.0f} tok/s", mem(t),
                     f"{t['step_ms']:,.0f} ms/step; {r['achieved_tflops']:.3f} TFLOP/s = MFU {100 * r['mfu']:.1f}% "
                     f"of {r['peak_tflops']:.3f} ({t['peak_matmul']} matmul)"))
        rows.append((f"reference (fp32, {ref['model']['vocab_size']:,} ids)", f"{ref['tokens_per_sec']:,.0f} tok/s",
                     mem(ref), f"{ref['step_ms']:,.0f} ms/step; plain loop, AdamW, full logits"))
        same = r.get("reference_same_vocab")
        if same:
            rows.append((f"reference (fp32, {same['model']['vocab_size']:,} ids)",
                         f"{same['tokens_per_sec']:,.0f} tok/s", mem(same), f"{same['step_ms']:,.0f} ms/step"))
        if r["numerics_ok"] is None:
            numerics = r["numerics_note"]
        else:
            numerics = (f"loss diff {r['loss_diff']:.4f} nats (first {r['loss_diff_first']:.4f}, last "
                        f"{r['loss_diff_last']:.4f}): {'ok' if r['numerics_ok'] else 'TOO LARGE'} "
                        f"(<= {r['loss_tolerance']})")
        rows.append(("speedup", f"{r['speedup_vs_reference']:.2f}x", "",
                     f"at the same vocabulary {r['speedup_same_vocab']:.2f}x; {numerics}"))
    if "tokenize" in r:
        t = r["tokenize"]
        rows.append(("tokenize", f"{t['mb_per_sec']:.1f} MB/s, {t['tokens_per_sec'] / 1e6:.2f}M tok/s", mem(t),
                     f"{t['corpus_mb']:.1f} MB corpus, {t['tokens']:,} tokens, {t['threads']} threads"))
    if "sample" in r:
        s = r["sample"]
        note = (f"batch 1, {s['new_tokens']} new tokens, KV cache (without: {s['tokens_per_sec_no_cache']:,.1f} "
                f"tok/s, so the cache gives {s['kv_cache_speedup']:.2f}x)")
        rows.append(("sample", f"{s['tokens_per_sec']:,.1f} tok/s", mem(s), note))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head, ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(line.rstrip() for line in lines)
