"""Developer tools run as modules (`python -m pass_jax.tools.<name>`)."""
