"""Data: document sources, tokenisation, packing and batching, held-out prompts."""
