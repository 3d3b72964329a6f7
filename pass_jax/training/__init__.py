"""Training: the train step (`trainer`), an experiment's stages (`stages`), losses, lookahead
insertion, optimizers, the model's own continuations (`generations`) and metrics."""
