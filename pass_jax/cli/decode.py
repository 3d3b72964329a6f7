"""`pass-jax-decode`: decodes a prompt and prints the completion and its statistics.

    pass-jax-decode --hf_dir /ckpt/Llama-3.2-1B --head /runs/h/heads/lookahead --prompt "def "
    pass-jax-decode --hf_dir /ckpt/Llama-3.2-1B --method pass_unk --prompt "def "  # no head
    pass-jax-decode --config tiny --workdir /tmp/tiny_run --compare --prompt "def "
    pass-jax-decode --config small --workdir /tmp/small_run --method pearl \
        --draft_checkpoint /tmp/small_draft_run/checkpoints/base --prompt "def "

With `--hf_dir` the tokenizer and weights are the Hugging Face directory's and the lookahead
table is `--head`'s; with `--config` a trained checkpoint of the experiment's workdir.
`--draft_checkpoint` is the draft model of `--method sps` and `pearl`, trained with the same
tokenizer (`configs/small_draft.py` for `small`).
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from pass_jax.cli.commands import (
    DEFAULT_HF_MAX_LOOKAHEAD,
    DecodeOptions,
    decode_report,
    experiment_source,
    hf_source,
    with_draft_model,
)
from pass_jax.cli.flags import run_main
from pass_jax.config import DTYPE_NAMES
from pass_jax.decode.generation import DRAFT_MODEL_METHODS, METHODS, check_options
from pass_jax.decode.methods import TRAINED_TABLE_METHODS
from pass_jax.decode.verify import DRAFT_RULES
from pass_jax.sampling import Sampler

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config (a file or a packaged config's name) of a trained workdir."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (tokenizer, checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint or step directory to load.")
_STAGE = flags.DEFINE_string("stage", None, "Stage whose checkpoint to load (default: the last).")
_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "A Hugging Face LLaMA directory (config.json, safetensors, tokenizer)."
)
_HEAD = flags.DEFINE_string(
    "head", None, "A PaSS head directory (e.g. WORKDIR/heads/lookahead) whose table to draft with."
)
_MAX_LOOKAHEAD = flags.DEFINE_integer(
    "max_lookahead",
    None,
    f"With --hf_dir and no --head: rows of the untrained table --method pass_unk drafts with "
    f"(default {DEFAULT_HF_MAX_LOOKAHEAD}).",
)
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt text.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file whose contents are the prompt.")
_METHOD = flags.DEFINE_enum(
    "method",
    None,
    METHODS,
    "Decoding method (default: pass with a trained table, i.e. a checkpoint or --head; else ar; "
    "pass_unk drafts with the untrained UNK table).",
)
_NUM_LOOKAHEAD = flags.DEFINE_integer(
    "num_lookahead", None, "Drafts per window (default L_max; 4 with a draft model)."
)
_DRAFT_CHECKPOINT = flags.DEFINE_string(
    "draft_checkpoint",
    None,
    "The draft model of --method sps or pearl (the default with it: sps): a checkpoint or step "
    "directory trained with the model's tokenizer, e.g. WORKDIR/checkpoints/base of "
    "configs/small_draft.py.",
)
_CANDIDATES = flags.DEFINE_integer(
    "candidates", 1, "Draft candidates per position (the top one continues the chain)."
)
_DRAFT_RULE = flags.DEFINE_enum(
    "draft_rule",
    "sampled",
    DRAFT_RULES,
    "How drafts are proposed under sampling: sampled from q, distinct (candidates without "
    "replacement), or argmax (deterministic, verified as one-hot proposals).",
)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0: greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k filtering (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Top-p (nucleus) filtering (1: off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate.")
_COMPARE = flags.DEFINE_bool("compare", False, "Also run autoregressive decoding and compare.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    DTYPE_NAMES,
    "Compute dtype, matmul operands too (default: the checkpoint's; float32 with --hf_dir).",
)
flags.mark_flags_as_mutual_exclusive(["config", "hf_dir"], required=True)
flags.mark_flags_as_mutual_exclusive(["prompt", "prompt_file"], required=True)


def _read_prompt() -> str:
    """`--prompt`, or `--prompt_file`'s UTF-8 text."""
    if _PROMPT_FILE.value is None:
        return _PROMPT.value
    path = _PROMPT_FILE.value
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--prompt_file {path}: no such file") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt_file {path} is not UTF-8 text: {e}") from e


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The checks that need no model, before anything loads (the table size: in the sources).
    Sampler.check(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    check_options(_MAX_NEW_TOKENS.value, _NUM_LOOKAHEAD.value, _SEED.value)
    draft = _DRAFT_CHECKPOINT.value is not None
    if draft and _METHOD.value not in (None, *DRAFT_MODEL_METHODS):
        raise app.UsageError(
            f"--draft_checkpoint is for --method {' or '.join(DRAFT_MODEL_METHODS)}, not "
            f"{_METHOD.value}"
        )
    if not draft and _METHOD.value in DRAFT_MODEL_METHODS:
        raise app.UsageError(
            f"--method {_METHOD.value} drafts with a draft model: give --draft_checkpoint"
        )
    if draft and _NUM_LOOKAHEAD.value == 0:
        raise app.UsageError("--num_lookahead: a draft model drafts at least 1 token per window")
    num_lookahead = None if draft else _NUM_LOOKAHEAD.value  # the table's: none needed
    prompt = _read_prompt()
    if _HF_DIR.value is not None:
        for flag in (_WORKDIR, _CHECKPOINT, _STAGE):
            if flag.value is not None:
                raise app.UsageError(f"--{flag.name} belongs to --config, not --hf_dir")
        if _METHOD.value in TRAINED_TABLE_METHODS and _HEAD.value is None:
            raise app.UsageError(
                f"--method {_METHOD.value} drafts with a trained table: give --head, or use "
                "--method pass_unk (untrained table) or ar"
            )
        source = hf_source(
            _HF_DIR.value,
            head=_HEAD.value,
            max_lookahead=_MAX_LOOKAHEAD.value,
            dtype=_DTYPE.value,
            num_lookahead=num_lookahead,
        )
    else:
        if _MAX_LOOKAHEAD.value is not None:
            raise app.UsageError("--max_lookahead belongs to --hf_dir (a checkpoint has its own)")
        source = experiment_source(
            _CONFIG.value,
            workdir=_WORKDIR.value,
            checkpoint=_CHECKPOINT.value,
            stage=_STAGE.value,
            dtype=_DTYPE.value,
            head=_HEAD.value,
            num_lookahead=num_lookahead,
        )
    if draft:
        source = with_draft_model(source, _DRAFT_CHECKPOINT.value, dtype=_DTYPE.value)
    opts = DecodeOptions(
        prompt=prompt,
        method=_METHOD.value,
        num_lookahead=_NUM_LOOKAHEAD.value,
        candidates=_CANDIDATES.value,
        draft_rule=_DRAFT_RULE.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        seed=_SEED.value,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        compare=_COMPARE.value,
    )
    print(decode_report(source, opts))


def main() -> None:
    """The console script's entry point."""
    run_main(_main)
