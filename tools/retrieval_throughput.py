"""Training targets/s on MovieLens-1M: one target per pass (RetrievalStream, today's path)
against every position a target (Recommender's all-positions path), same model and batch."""

import time

import jax
import jax.numpy as jnp
import numpy as np

import phoenix_eqx as px
from phoenix_eqx.data import RetrievalStream, leave_last_out, load_movielens_1m
from phoenix_eqx.recommender import _batch, _build_models, _optimizer, _windows
from phoenix_eqx.training import (
    SequenceExample,
    all_positions_objective,
    init_optimizer,
    make_train_step,
    retrieval_objective,
)

options = px.FitOptions()
data = load_movielens_1m()
split = leave_last_out(data, held_out=2)
STEPS = 6


def timed(step, model, examples):
    opt_state = init_optimizer(_optimizer(options), model)
    model, opt_state, aux = step(model, opt_state, examples[0])  # compile
    jax.block_until_ready(aux)
    wall, cpu, targets = time.perf_counter(), time.process_time(), 0
    for example in examples[1:]:
        model, opt_state, aux = step(model, opt_state, example)
        targets += int(aux.get("targets", example.batch.user_hashes.shape[0]))
    jax.block_until_ready(aux)
    return targets / (time.perf_counter() - wall), targets / (time.process_time() - cpu)


# Today's path: the library's own hashes and stream, one positive per example.
stream = RetrievalStream(split, options.batch_size, options.history_seq_len, seed=0)
retriever = px.training.TrainableRetriever(
    px.PhoenixRetrievalModelConfig(
        model=_build_models(options, data.num_items, key=jax.random.key(0))[0].config.model,
        emb_size=options.emb_size,
        history_seq_len=options.history_seq_len,
        fprop_dtype=jnp.float32,
        hash_config=px.HashConfig(
            data.user_hashes.shape[1], data.post_hashes.shape[1], data.author_hashes.shape[1]
        ),
        product_surface_vocab_size=max(int(data.num_surfaces), 1),
    ),
    data.num_user_rows,
    data.num_post_rows,
    data.num_author_rows,
    key=jax.random.key(0),
)
one = timed(
    make_train_step(retrieval_objective, _optimizer(options)),
    retriever,
    [stream(i) for i in range(STEPS + 1)],
)
print(f"one target per pass: {one[0]:,.0f} targets/s wall, {one[1]:,.0f} per CPU-second")

# All positions: each user's latest history_seq_len training items, every position a target.
sequences = [split.items[u, : split.train_lengths[u]] for u in range(1, data.num_users + 1)]
windows = _windows(sequences, options.history_seq_len)
targets = np.concatenate([windows, np.zeros((len(windows), 1), np.int32)], axis=1)
corpus = jnp.arange(data.num_items + 1, dtype=jnp.int32)[:, None]
rng = np.random.default_rng(0)
examples = []
for _ in range(STEPS + 1):
    rows = rng.choice(len(windows), options.batch_size, replace=False)
    examples.append(
        SequenceExample(
            batch=_batch(windows[rows], np.zeros((options.batch_size, 0), np.int32)),
            targets=jnp.asarray(targets[rows]),
            target_log_q=jnp.zeros(targets[rows].shape),
            corpus_post_hashes=corpus,
            corpus_author_hashes=(corpus > 0).astype(jnp.int32),
        )
    )
model = _build_models(options, data.num_items, key=jax.random.key(0))[0]
for loss in ("full", "sampled"):
    rate = timed(
        make_train_step(
            lambda m, e, loss=loss: all_positions_objective(m, e, loss), _optimizer(options)
        ),
        model,
        examples,
    )
    print(f"all positions ({loss}): {rate[0]:,.0f} targets/s wall, {rate[1]:,.0f} per CPU-second")
