"""Training: the multi-insertion layout, one step per stage, and resume after an interruption."""

import dataclasses
import functools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import greedy_reference, tiny_config
from flax import nnx

from pass_jax.data.batches import BatchIterator
from pass_jax.data.config import DataConfig
from pass_jax.data.sources import make_source
from pass_jax.experiment import (
    FROZEN_BASE_STAGES,
    EvalConfig,
    ExperimentConfig,
    StageConfig,
    TokenizerConfig,
    TrainConfig,
)
from pass_jax.io.checkpoint import CheckpointError, load_params, split_params
from pass_jax.io.workdir import TOKENIZER_FILE, experiment_tokenizer, load_model
from pass_jax.model import Transformer
from pass_jax.tokenizer import train_tokenizer
from pass_jax.training import generations, stages
from pass_jax.training.insertion import build_inputs, sample_insertion_points
from pass_jax.training.losses import compute_losses
from pass_jax.training.metrics import read_records
from pass_jax.training.stages import (
    HeldOut,
    StaleStageError,
    TrainingInterrupted,
    run,
    stage_checkpoints,
)
from pass_jax.training.trainer import Trainer

CONFIG = tiny_config(
    n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=128, max_lookahead=4
)
SEQ_LEN = 32


def _model(seed: int = 0) -> Transformer:
    return Transformer(CONFIG, rngs=nnx.Rngs(seed))


def _batch(seed: int = 0, batch_size: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, CONFIG.vocab_size, (batch_size, SEQ_LEN), np.int32
    )


def _stage(name: str, **changes) -> StageConfig:
    weight = 0.0 if name == "base" else 1.0
    values = dict(
        name=name, steps=10, learning_rate=1e-2, lookahead_weight=weight, num_insertions=3
    )
    return StageConfig(**{**values, **changes})


@nnx.jit
def _logits(model, tokens, **inputs):
    return model(tokens, **inputs)


def _layout_logits(model: Transformer, inputs) -> jax.Array:
    """Logits [B, N, V] of the text + lookahead-block layout."""
    return _logits(
        model,
        inputs.tokens,
        lookahead_slots=inputs.lookahead_slots,
        positions=inputs.positions,
        block_mask=inputs.block_mask,
    )


@nnx.jit
def _losses(model: Transformer, batch: jax.Array) -> dict[str, jax.Array]:
    points = sample_insertion_points(jax.random.key(7), batch.shape[0], SEQ_LEN, 3)
    return compute_losses(model, build_inputs(batch, points, 4))


def _stage_loss(model: Transformer, stage: StageConfig, batch: np.ndarray) -> float:
    """The stage's objective on fixed insertion points."""
    metrics = _losses(model, jnp.asarray(batch))
    return float(stage.lm_weight * metrics["lm_loss"] + stage.lookahead_weight * metrics["la_loss"])


def _arrays(model: Transformer) -> dict[str, dict]:
    return jax.tree.map(np.array, split_params(model))


def _same(a, b) -> bool:
    return jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_block_mask_matches_each_block_run_alone():
    model = _model()
    batch = jnp.asarray(_batch(1, batch_size=2))
    points = np.array([[0, 7, 29], [13, 2, 20]], np.int32)  # 29 = T-3: one valid target
    inputs = build_inputs(batch, jnp.asarray(points), num_lookahead=4)
    logits = _layout_logits(model, inputs)  # [B, N, V]
    text_len = SEQ_LEN - 1
    np.testing.assert_allclose(logits[:, :text_len], _logits(model, batch[:, :text_len]), atol=1e-5)

    # Each block alone: [x_0 .. x_j, LA_1 .. LA_4], right-padded (causal: padding is unseen).
    rows, blocks = np.nonzero(points >= 0)
    alone = np.zeros((len(rows), SEQ_LEN + 4), np.int32)
    slots = np.full(alone.shape, -1, np.int32)
    for i, (row, k) in enumerate(zip(rows, blocks, strict=True)):
        j = points[row, k]
        alone[i, : j + 1] = batch[row, : j + 1]
        slots[i, j + 1 : j + 5] = np.arange(4)
    expected = _logits(model, jnp.asarray(alone), lookahead_slots=jnp.asarray(slots))
    for i, (row, k) in enumerate(zip(rows, blocks, strict=True)):
        j = points[row, k]
        got = logits[row, text_len + 4 * k : text_len + 4 * (k + 1)]
        np.testing.assert_allclose(got, expected[i, j + 1 : j + 5], atol=1e-5)
        targets = np.asarray(batch[row])[j + 2 : j + 6]
        np.testing.assert_array_equal(inputs.targets[row, k, : len(targets)], targets)
        np.testing.assert_array_equal(inputs.valid[row, k], np.arange(4) < len(targets))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_losses_match_a_numpy_reference():
    model = _model()
    batch = jnp.asarray(_batch(2, batch_size=2))
    points = jnp.asarray(np.array([[0, 11, 29], [5, 17, 26]], np.int32))
    inputs = build_inputs(batch, points, num_lookahead=4)
    metrics = jax.jit(compute_losses, static_argnums=2)(model, inputs, "ce")
    logits = np.asarray(_layout_logits(model, inputs))  # [B, N, V]
    text_len = SEQ_LEN - 1
    text = _log_softmax(logits[:, :text_len])  # [B, T-1, V]
    targets = np.asarray(inputs.text_targets)
    token_ce = -np.take_along_axis(text, targets[..., None], -1)[..., 0]  # [B, T-1]
    lm = token_ce.mean()

    draft = _log_softmax(logits[:, text_len:]).reshape(2, 3, 4, -1)  # [B, K, L, V]
    teacher = np.take_along_axis(
        text, np.asarray(inputs.teacher_index).reshape(2, -1, 1), axis=1
    ).reshape(draft.shape)
    valid = np.asarray(inputs.valid)
    ce = -np.take_along_axis(draft, np.asarray(inputs.targets)[..., None], -1)[..., 0]
    kl = (np.exp(teacher) * (teacher - draft)).sum(-1)
    match = draft.argmax(-1) == teacher.argmax(-1)
    np.testing.assert_allclose(metrics["lm_loss"], lm, rtol=1e-5)
    np.testing.assert_allclose(metrics["la_ce"], ce[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["la_kl"], kl[valid].mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["la_match"], (match * valid).sum((0, 1)) / valid.sum((0, 1)))
    assert metrics["la_loss"] == metrics["la_ce"]

    first_row = jax.jit(compute_losses, static_argnums=(2, 3))(model, inputs, "kl", 1)
    np.testing.assert_allclose(first_row["lm_loss"], token_ce[0].mean(), rtol=1e-5)
    np.testing.assert_allclose(first_row["la_kl"], kl[valid].mean(), rtol=1e-4, atol=1e-6)


def test_row_groups_give_the_same_losses_and_gradients():
    model = _model()
    batch = jnp.asarray(_batch(5, batch_size=2))  # 2 groups: one row each
    inputs = build_inputs(batch, sample_insertion_points(jax.random.key(0), 2, SEQ_LEN, 2), 4)

    @functools.partial(jax.jit, static_argnums=1)
    def losses_and_grads(model, row_groups):
        def loss(model):
            metrics = compute_losses(model, inputs, "kl", 3, row_groups)
            return metrics["lm_loss"] + metrics["la_loss"], metrics

        return nnx.value_and_grad(loss, has_aux=True)(model)

    (_, whole), grads = losses_and_grads(model, 1)
    (_, split), split_grads = losses_and_grads(model, 2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), whole, split)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
        nnx.to_pure_dict(grads),
        nnx.to_pure_dict(split_grads),
    )
    with pytest.raises(ValueError, match="2 rows does not split into 3 row groups"):
        compute_losses(model, inputs, "kl", row_groups=3)


@pytest.mark.parametrize("name", ["base", "lookahead", "distill", "adapters", "joint"])
def test_one_step_lowers_the_loss(name):
    model, batch, stage = _model(), _batch(), _stage(name)
    if stage.trains_adapters:
        model.set_adapters(2)
    trainer = Trainer(model, stage, seed=0)
    before, weights = _stage_loss(model, stage, batch), _arrays(model)
    trainer.train_step(batch)
    trainer.sync()
    after, updated = _stage_loss(model, stage, batch), _arrays(model)
    assert after < before
    # The frozen-base stages leave the base bit-identical; plain base training leaves the table.
    assert _same(weights["params"], updated["params"]) == (stage.name in FROZEN_BASE_STAGES)
    assert _same(weights["lookahead"], updated["lookahead"]) == (name == "base")
    assert ("adapters" in updated) == (name == "adapters")


def _experiment(tmp_path, steps: int) -> ExperimentConfig:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "value", "import", "class", "if", "else", "for", "in"]
    for i in range(40):
        lines = [" ".join(rng.choice(words, 8)) for _ in range(30)]
        (corpus / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    return ExperimentConfig(
        seed=0,
        model=dataclasses.replace(CONFIG, max_seq_len=128),
        tokenizer=TokenizerConfig(vocab_size=300),
        data=DataConfig(
            source="text_dir",
            path=str(corpus),
            split_fractions=(0.7, 0.3, 0.0),
            seq_len=SEQ_LEN,
            batch_size=2,
        ),
        stages=(_stage("joint", steps=steps, warmup_steps=2),),
        train=TrainConfig(log_every=2, checkpoint_every=100),
        eval=EvalConfig(loss_sequences=0, num_prompts=0),  # test_cli covers the evaluation
    )


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, steps=6)
    run(exp, tmp_path / "whole")

    next_batch = BatchIterator.__next__

    def interrupted_at_step_3(self):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 4: saved after it
        return next_batch(self)

    monkeypatch.setattr(BatchIterator, "__next__", interrupted_at_step_3)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at stage joint step 4"):
        run(exp, tmp_path / "split")
    monkeypatch.undo()
    run(exp, tmp_path / "split")

    models = {}
    for name in ("whole", "split"):
        models[name] = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
        meta = load_params(models[name], stage_checkpoints(tmp_path / name, "joint"))
        assert meta["step"] == 6 and meta["data"]["step"] == 6
    assert _same(_arrays(models["whole"]), _arrays(models["split"]))


def test_held_out_prompts_start_with_bos_exactly_when_the_data_does(tmp_path):
    exp = _experiment(tmp_path, steps=3)
    tok = train_tokenizer(make_source(exp.data), vocab_size=300, output_path=tmp_path / "t.model")
    for add_bos in (False, True):
        config = dataclasses.replace(
            exp,
            data=dataclasses.replace(exp.data, add_bos=add_bos),
            eval=EvalConfig(loss_sequences=0, num_prompts=2, prompt_len=8, max_new_tokens=16),
        )
        for prompt in HeldOut.build(config, tok).prompts:
            assert len(prompt) == 8 + add_bos and (prompt[0] == tok.bos_id) == add_bos


def test_generated_corpus_is_the_models_own_greedy_continuation():
    model = _model()
    prompts = _batch(seed=3, batch_size=3)[:, :5]
    corpus = generations.generate_corpus(model, prompts, seq_len=12, temperature=0.0, batch_size=2)
    assert corpus.shape == (3, 12) and corpus.dtype == np.int32
    np.testing.assert_array_equal(corpus[:, :5], prompts)
    for row, prompt in zip(corpus, prompts, strict=True):
        assert row[5:].tolist() == greedy_reference(model, prompt.tolist(), 7)


def test_generated_corpus_cache_follows_the_base_weights_not_the_table(tmp_path):
    model = _model()
    prompts = _batch(seed=4, batch_size=2)[:, :5]
    settings = dict(seq_len=10, temperature=0.0, top_k=0, seed=0)
    first, key = generations.load_or_generate(tmp_path, model, prompts, **settings)

    model.lookahead[...] = model.lookahead[...] + 1.0  # the stage trains the table: same corpus
    again, same_key = generations.load_or_generate(tmp_path, model, prompts, **settings)
    assert same_key == key
    np.testing.assert_array_equal(again, first)

    model.lm_head[...] = model.lm_head[...] * 2.0  # a retrained base: a new corpus
    _, new_key = generations.load_or_generate(tmp_path, model, prompts, **settings)
    assert new_key != key
    assert (tmp_path / (generations.CORPUS_FILENAME + ".key")).read_text() == new_key


def test_distill_stage_trains_the_table_on_the_models_generations_and_resumes(tmp_path):
    base_stage = _stage("base", steps=2, warmup_steps=1)
    distill = _stage("distill", steps=3, generations=5, generation_prompt_len=8)
    exp = dataclasses.replace(_experiment(tmp_path, steps=3), stages=(base_stage, distill))
    run(exp, tmp_path / "run")

    corpus_file = tmp_path / "run" / "generations" / "distill" / generations.CORPUS_FILENAME
    corpus = np.load(corpus_file)
    assert corpus.shape == (5, SEQ_LEN)
    models = {}
    for stage in ("base", "distill"):
        models[stage] = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
        load_params(models[stage], stage_checkpoints(tmp_path / "run", stage))
    base, distilled = _arrays(models["base"]), _arrays(models["distill"])
    assert _same(base["params"], distilled["params"])  # the base stays frozen
    assert not _same(base["lookahead"], distilled["lookahead"])
    # The corpus is the frozen base's own greedy continuation of the stage's prompts.
    again = generations.generate_corpus(
        models["base"], corpus[:, :8], seq_len=SEQ_LEN, temperature=0.0
    )
    np.testing.assert_array_equal(again, corpus)

    written = corpus_file.stat().st_mtime_ns
    longer = dataclasses.replace(exp, stages=(base_stage, dataclasses.replace(distill, steps=4)))
    run(longer, tmp_path / "run")  # resumes distill from step 3 on the cached corpus
    assert corpus_file.stat().st_mtime_ns == written
    meta = load_params(models["distill"], stage_checkpoints(tmp_path / "run", "distill"))
    assert meta["step"] == 4
    corpus_file.unlink()
    run(longer, tmp_path / "run", reevaluate=True)  # a finished stage generates nothing
    assert not corpus_file.exists()


def test_joint_with_a_generation_share_trains_on_corpus_and_generated_rows(tmp_path, monkeypatch):
    base_stage = _stage("base", steps=2, warmup_steps=1)
    joint = _stage("joint", steps=3, generations=4, generation_prompt_len=8, generation_share=0.5)
    exp = dataclasses.replace(_experiment(tmp_path, steps=3), stages=(base_stage, joint))
    steps = []
    train_step = Trainer.train_step
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, batch: steps.append(batch) or train_step(self, batch)
    )
    run(exp, tmp_path / "run")

    corpus_file = tmp_path / "run" / "generations" / "joint" / generations.CORPUS_FILENAME
    corpus = np.load(corpus_file)
    assert corpus.shape == (4, SEQ_LEN)
    base = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
    load_params(base, stage_checkpoints(tmp_path / "run", "base"))
    again = generations.generate_corpus(base, corpus[:, :8], seq_len=SEQ_LEN, temperature=0.0)
    np.testing.assert_array_equal(again, corpus)  # the base's own greedy continuations
    generated = {row.tobytes() for row in corpus}
    joint_batches = steps[base_stage.steps :]
    assert len(joint_batches) == 3
    for batch in joint_batches:  # batch 2: one corpus row, then one generated row
        assert batch.shape == (2, SEQ_LEN)
        assert batch[0].tobytes() not in generated and batch[1].tobytes() in generated

    # Resuming generates nothing: the corpus is keyed by the weights the stage started from.
    written = corpus_file.stat().st_mtime_ns
    longer = dataclasses.replace(exp, stages=(base_stage, dataclasses.replace(joint, steps=4)))
    run(longer, tmp_path / "run")
    assert corpus_file.stat().st_mtime_ns == written and len(steps) == 6


def test_generation_share_and_row_groups_are_checked(tmp_path):
    with pytest.raises(ValueError, match="generation_share must be in"):
        _stage("joint", generation_share=1.0)
    with pytest.raises(ValueError, match="generation_share is a `joint` and `adapters` option"):
        _stage("lookahead", generation_share=0.5)
    exp = _experiment(tmp_path, steps=3)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, batch_size=4))
    for share in (0.2, 0.3):  # 0.8 and 1.2 rows of 4
        with pytest.raises(ValueError, match=f"share={share} of config.data.batch_size=4"):
            dataclasses.replace(exp, stages=(_stage("joint", generation_share=share),))
    dataclasses.replace(exp, stages=(_stage("joint", generation_share=0.25),))  # one row of 4
    with pytest.raises(ValueError, match="row_groups=3 must divide"):
        dataclasses.replace(exp, train=TrainConfig(row_groups=3))


def _base_then(exp: ExperimentConfig, stage: StageConfig, base_steps: int = 2) -> ExperimentConfig:
    return dataclasses.replace(
        exp, stages=(_stage("base", steps=base_steps, warmup_steps=1), stage)
    )


def _with_train(exp: ExperimentConfig, **changes) -> ExperimentConfig:
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **changes))


def test_a_stage_trained_from_other_inputs_is_an_error_or_trained_again(tmp_path):
    lookahead = _stage("lookahead", steps=2, warmup_steps=1)
    exp = _base_then(_experiment(tmp_path, steps=3), lookahead)
    run(exp, tmp_path / "run")
    longer_base = _base_then(exp, lookahead, base_steps=3)
    with pytest.raises(
        StaleStageError,
        match="stage lookahead was trained on base step 2, but base is now at step 3: delete "
        r".*checkpoints/lookahead to train it again, or rerun with --config.train.retrain_stale",
    ):
        run(longer_base, tmp_path / "run")  # base resumes to step 3; lookahead is stale
    run(_with_train(longer_base, retrain_stale=True), tmp_path / "run")
    model = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
    meta = load_params(model, stage_checkpoints(tmp_path / "run", "lookahead"))
    assert meta["step"] == 2 and meta["inputs"]["from"]["step"] == 3
    evals = [
        (r["stage"], r["step"]) for r in read_records(tmp_path / "run") if r["event"] == "eval"
    ]
    assert evals == [("base", 2), ("base", 3), ("lookahead", 2)]  # the stale one's record dropped
    assert run(longer_base, tmp_path / "run") == {}  # up to date: skipped
    other_lr = dataclasses.replace(
        longer_base,
        stages=(longer_base.stages[0], dataclasses.replace(lookahead, learning_rate=0.5)),
    )
    with pytest.raises(StaleStageError, match=r"config\.lookahead\.learning_rate=0\.01, now 0\.5"):
        run(other_lr, tmp_path / "run")


def _other_tokenizer(tmp_path, vocab_size: int = 300):
    rng = np.random.default_rng(1)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(400)]
    text = [" ".join(rng.choice(words, 12)) + "\n" for _ in range(600)]
    return train_tokenizer(text, vocab_size=vocab_size, output_path=tmp_path / "other.model")


def test_a_checkpoint_is_not_used_with_another_tokenizer(tmp_path):
    exp = _experiment(tmp_path, steps=3)
    workdir = tmp_path / "run"
    run(exp, workdir)
    other = _other_tokenizer(tmp_path)
    assert other.vocab_size == experiment_tokenizer(exp, workdir).vocab_size
    shutil.copy(other.path, workdir / TOKENIZER_FILE)
    tokenizer = experiment_tokenizer(exp, workdir)
    mismatch = (
        rf"checkpoints/joint/3 was trained with tokenizer \w{{12}}, but \S*{TOKENIZER_FILE} is "
        rf"tokenizer {tokenizer.fingerprint[:12]}: use the tokenizer it was trained with"
    )
    with pytest.raises(CheckpointError, match=mismatch):  # what decode.py loads
        load_model(stage_checkpoints(workdir, "joint"), tokenizer=tokenizer)
    longer = dataclasses.replace(exp, stages=(_stage("joint", steps=4, warmup_steps=2),))
    with pytest.raises(CheckpointError, match=mismatch):  # resuming
        run(longer, workdir)


def test_an_interrupted_evaluation_is_run_on_rerun(tmp_path, monkeypatch, capsys):
    exp = _experiment(tmp_path, steps=3)
    evaluate = stages.evaluate

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args)

    monkeypatch.setattr(stages, "evaluate", interrupted)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at stage joint step 3"):
        run(exp, tmp_path / "run")
    assert "interrupted during evaluation of stage joint; rerun to evaluate it" in (
        capsys.readouterr().out
    )
    monkeypatch.undo()
    assert set(run(exp, tmp_path / "run")) == {"joint"}  # trained: evaluated only
    assert "not evaluated yet: evaluating" in capsys.readouterr().out
    assert run(exp, tmp_path / "run") == {}
    evals = [
        (r["stage"], r["step"]) for r in read_records(tmp_path / "run") if r["event"] == "eval"
    ]
    assert evals == [("joint", 3)]


def test_a_damaged_generations_cache_is_generated_again(tmp_path):
    distill = _stage("distill", steps=2, generations=5, generation_prompt_len=8)
    exp = _base_then(_experiment(tmp_path, steps=3), distill)
    run(exp, tmp_path / "run")
    corpus_file = tmp_path / "run" / "generations" / "distill" / generations.CORPUS_FILENAME
    corpus = np.load(corpus_file)
    corpus_file.write_bytes(corpus_file.read_bytes()[:100])  # cut short
    longer = _base_then(exp, dataclasses.replace(distill, steps=3))
    with pytest.warns(UserWarning, match=rf"damaged generations cache \S*{corpus_file.name} "):
        run(longer, tmp_path / "run")
    np.testing.assert_array_equal(np.load(corpus_file), corpus)
    model = Transformer(exp.model.replace(vocab_size=300), rngs=nnx.Rngs(1))
    assert load_params(model, stage_checkpoints(tmp_path / "run", "distill"))["step"] == 3


def test_records_past_the_resumed_step_are_dropped(tmp_path):
    exp = _with_train(_experiment(tmp_path, steps=3), log_every=1)
    run(exp, tmp_path / "run")
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:  # a run killed after its step 3
        for step in (4, 5):
            f.write(f'{{"event": "train", "stage": "joint", "step": {step}, "loss": 9.0}}\n')
        f.write('{"event": "train", "sta')  # a line cut short
    run(
        dataclasses.replace(exp, stages=(_stage("joint", steps=5, warmup_steps=2),)),
        tmp_path / "run",
    )
    records = read_records(tmp_path / "run")
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5]
    assert all(r.get("loss") != 9.0 for r in records)
    assert len(records) == len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
