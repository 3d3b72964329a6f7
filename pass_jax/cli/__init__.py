"""Command lines: `pass-jax-train` (`cli.train`) and `pass-jax-decode` (`cli.decode`); the
top-level train.py and decode.py call their `main`s."""
