"""Reading and writing models: orbax checkpoints, Hugging Face safetensors and their
conversion, PaSS heads, and the training workdir's layout."""
