"""Decodes a prompt with a trained checkpoint and prints the completion and its statistics.

python decode.py --config configs/tiny.py --workdir /tmp/tiny_run --compare --prompt "def "
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from pass_jax import cli
from pass_jax.config import DTYPE_NAMES
from pass_jax.decode.generation import METHODS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (tokenizer, checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint or step directory to load.")
_STAGE = flags.DEFINE_string("stage", None, "Stage whose checkpoint to load (default: the last).")
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt text.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file whose contents are the prompt.")
_METHOD = flags.DEFINE_enum("method", "pass", METHODS, "Decoding method.")
_NUM_LOOKAHEAD = flags.DEFINE_integer("num_lookahead", None, "Drafts per window (default L_max).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0: greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k filtering (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Top-p (nucleus) filtering (1: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate.")
_COMPARE = flags.DEFINE_bool("compare", False, "Also run autoregressive decoding and compare.")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, DTYPE_NAMES, "Compute dtype, matmul operands too (default: the checkpoint's)."
)
flags.mark_flag_as_required("config")
flags.mark_flags_as_mutual_exclusive(["prompt", "prompt_file"], required=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    prompt = _PROMPT.value
    if _PROMPT_FILE.value is not None:
        prompt = Path(_PROMPT_FILE.value).read_text()
    opts = cli.DecodeOptions(
        prompt=prompt,
        method=_METHOD.value,
        num_lookahead=_NUM_LOOKAHEAD.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        seed=_SEED.value,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        compare=_COMPARE.value,
    )
    report = cli.decode_main(
        _CONFIG.value,
        opts,
        workdir=_WORKDIR.value,
        checkpoint=_CHECKPOINT.value,
        stage=_STAGE.value,
        dtype=_DTYPE.value,
    )
    print(report)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser)
