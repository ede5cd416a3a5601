"""export: write the best checkpoint as a Hugging Face transformers folder and as one GGUF file (f16) for llama.cpp,
ollama and LM Studio, both GPT-2 architecture, ready to share."""

import sys

from nanoslm.errors import exit_on_user_error
from nanoslm.export import export
from nanoslm.gguf_export import export_gguf

if __name__ == "__main__":
    with exit_on_user_error():
        checkpoint_path, out_dir, gguf_path = sys.argv[1:]
        print(f"wrote {export(checkpoint_path, out_dir)}")
        print(f"wrote {export_gguf(checkpoint_path, gguf_path)}")
