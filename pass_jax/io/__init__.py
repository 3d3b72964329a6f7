"""Reading and writing models: orbax checkpoints, Hugging Face safetensors, conversion."""
