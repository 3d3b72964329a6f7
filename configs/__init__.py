"""The experiment configs, installed as `pass_jax.configs` (one `get_config()` per file)."""
