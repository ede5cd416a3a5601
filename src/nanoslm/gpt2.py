"""GPT-2's vocabulary as numbers and names: its size, its special token, its byte tokens and its files' hashes.

Imports nothing, so any module (config included) can use these without loading tiktoken or the tokenizer.
"""

EOT_TEXT = "<|endoftext|>"  # GPT-2's one special token; the hub's .txt files also separate stories with it
EOT = 50256  # <|endoftext|> in GPT-2's own vocabulary (a pruned one puts it last: vocab_size - 1)
N_VOCAB = 50257  # ids in GPT-2's vocabulary (tiktoken's "gpt2")
N_BYTES = 256  # GPT-2's ranks 0..255 are its byte tokens; every vocabulary keeps them
MIN_VOCAB = N_BYTES + 1  # the byte tokens and <|endoftext|>: the smallest vocabulary that encodes every text
# The hashes tiktoken_ext/openai_public.py pins for GPT-2's two files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
