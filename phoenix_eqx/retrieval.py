"""The Phoenix two-tower retrieval model: a transformer user tower and an MLP candidate tower,
and the `Corpus` of item vectors it retrieves from."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .config import PhoenixRetrievalModelConfig
from .embedding import InputEmbedding
from .initialisers import truncated_normal_init
from .inputs import RecsysBatch, RecsysEmbeddings, RetrievalOutput, check_inputs
from .kernels import corpus_top_k
from .kernels.dispatch import Implementation
from .transformer import Transformer, prefix_positions

NORM_EPS = 1e-12
UNIT_NORM_TOLERANCE = 1e-2


def l2_normalize(
    x: Float[Array, "*batch dim"],
) -> tuple[Float[Array, "*batch dim"], Float[Array, "*batch 1"]]:
    """`x / sqrt(max(sum(x^2), 1e-12))`, and the norm it divided by."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), NORM_EPS))
    return x / norm, norm


class CandidateTower(eqx.Module):
    """`normalize(silu(concat(post, author) @ P1) @ P2)`: items into the users' space."""

    projection_1: Float[Array, "features hidden"]
    projection_2: Float[Array, "hidden emb"]

    def __init__(self, num_hashes: int, emb_size: int, *, key: PRNGKeyArray):
        key_1, key_2 = jax.random.split(key)
        features = num_hashes * emb_size
        self.projection_1 = truncated_normal_init(key_1, (features, 2 * emb_size), features)
        self.projection_2 = truncated_normal_init(key_2, (2 * emb_size, emb_size), 2 * emb_size)

    def __call__(
        self, post_author_embeddings: Float[Array, "*batch hashes emb"]
    ) -> Float[Array, "*batch emb"]:
        # An explicit width, not -1: a reshape of zero items cannot infer it.
        *lead, hashes, emb = post_author_embeddings.shape
        flat = post_author_embeddings.reshape(*lead, hashes * emb)
        hidden = jax.nn.silu(jnp.dot(flat.astype(jnp.float32), self.projection_1))
        normalized, _ = l2_normalize(jnp.dot(hidden, self.projection_2))
        return normalized.astype(post_author_embeddings.dtype)


class PhoenixRetrievalModel(eqx.Module):
    """Retrieval: users and items as unit vectors, scored by dot product against a corpus."""

    embedding: InputEmbedding
    transformer: Transformer
    candidate_tower: CandidateTower
    config: PhoenixRetrievalModelConfig = eqx.field(static=True)

    def __init__(self, config: PhoenixRetrievalModelConfig, *, key: PRNGKeyArray):
        embedding_key, transformer_key, tower_key = jax.random.split(key, 3)
        self.embedding = InputEmbedding(config, with_candidates=False, key=embedding_key)
        self.transformer = Transformer(config.model, key=transformer_key)
        hashes = config.hash_config.num_item_hashes + config.hash_config.num_author_hashes
        self.candidate_tower = CandidateTower(hashes, config.emb_size, key=tower_key)
        self.config = config

    def _user_tower(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch prefix emb"], Bool[Array, "batch prefix"]]:
        """The user tower's float32 outputs over `[user | history]`, zero where invalid."""
        check_inputs(batch, embeddings, self.config, needs_candidates=False)
        tokens, valid = self.embedding.prefix_tokens(batch, embeddings)
        positions = prefix_positions(valid, self.config.model.candidate_positions)
        hidden = self.transformer(tokens, positions, valid, tokens.shape[1])
        # A select, not a product with the mask: an invalid position adds nothing, even NaN.
        return jnp.where(valid[..., None], hidden.astype(jnp.float32), 0.0), valid

    def encode_users(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch emb"], Float[Array, "batch 1"]]:
        """Unit user vectors (float32) and their norms before normalisation.

        The user tower attends over `[user | history]` (causal, as in the seed, unless the
        config says bidirectional); `config.user_pooling` reads its outputs: their mean over
        valid positions (the seed) or the output at the last valid position.
        """
        hidden, valid = self._user_tower(batch, embeddings)
        if self.config.user_pooling == "last":
            positions = jnp.arange(valid.shape[1])
            last = jnp.max(jnp.where(valid, positions, 0), axis=1)
            return l2_normalize(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
        count = jnp.sum(valid, axis=1, keepdims=True).astype(jnp.float32)
        return l2_normalize(jnp.sum(hidden, axis=1) / jnp.maximum(count, 1.0))

    def encode_all_prefixes(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch prefix emb"], Bool[Array, "batch prefix"]]:
        """Every prefix's unit user vector from one transformer pass, and which are valid.

        Row `t` is the user vector of `[user | history[:t]]`: equal to `encode_users` on the
        history truncated to its first `t` items. The causal tower makes token `t` depend only
        on tokens `<= t`, so `encode_users`' mean over valid outputs becomes a running mean,
        and its last valid output is token `t` itself.
        Histories must be left-aligned (valid items first, padding after): the rotary
        positions of a prefix's tokens are then those it has when encoded on its own (a
        right-aligned history would put the padding between the user and its items).
        """
        if self.config.model.history_attention != "causal":
            raise ValueError(
                "config.model.history_attention: expected 'causal' (a prefix's vector must not "
                f"see later items), got {self.config.model.history_attention!r}"
            )
        history_valid = batch.history_valid
        checked = eqx.error_if(
            batch.history_post_hashes,
            jnp.any(history_valid[:, 1:] & ~history_valid[:, :-1]),
            "batch.history_post_hashes: expected left-aligned histories (padding after items)",
        )
        batch = eqx.tree_at(lambda b: b.history_post_hashes, batch, checked)
        hidden, valid = self._user_tower(batch, embeddings)
        if self.config.user_pooling == "last":
            users, _ = l2_normalize(hidden)
            return users, valid
        running_sum = jnp.cumsum(hidden, axis=1)
        running_count = jnp.cumsum(valid, axis=1)[..., None].astype(jnp.float32)
        users, _ = l2_normalize(running_sum / jnp.maximum(running_count, 1.0))
        return users, valid

    def encode_items(
        self,
        post_embeddings: Float[Array, "*items item_hashes emb"],
        author_embeddings: Float[Array, "*items author_hashes emb"],
    ) -> Float[Array, "*items emb"]:
        """Unit item vectors from the candidate tower, for any leading shape: the one way items
        become vectors (candidates, corpora, training positives and negatives)."""
        hash_config = self.config.hash_config
        expected = (
            ("post_embeddings", post_embeddings, hash_config.num_item_hashes),
            ("author_embeddings", author_embeddings, hash_config.num_author_hashes),
        )
        for name, array, hashes in expected:
            if array.ndim < 2 or array.shape[-2:] != (hashes, self.config.emb_size):
                raise ValueError(
                    f"{name}: expected [..., {hashes}, {self.config.emb_size}] (hash config, "
                    f"emb_size), got {array.shape}"
                )
        if post_embeddings.shape[:-2] != author_embeddings.shape[:-2]:
            raise ValueError(
                f"author_embeddings: expected leading shape {post_embeddings.shape[:-2]} like "
                f"post_embeddings, got {author_embeddings.shape}"
            )
        post_author = jnp.concatenate([post_embeddings, author_embeddings], axis=-2)
        return self.candidate_tower(post_author)

    def encode_candidates(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch candidates emb"], Bool[Array, "batch candidates"]]:
        """Unit vectors of the batch's candidates (`encode_items`), and which are valid."""
        check_inputs(batch, embeddings, self.config, needs_candidates=False)
        vectors = self.encode_items(
            embeddings.candidate_post_embeddings, embeddings.candidate_author_embeddings
        )
        return vectors, batch.candidate_valid

    def __call__(
        self,
        batch: RecsysBatch,
        embeddings: RecsysEmbeddings,
        corpus: "Corpus",
        k: int,
        *,
        implementation: Implementation = "auto",
    ) -> RetrievalOutput:
        """Encode the users, then take each one's `k` best corpus items by dot product.

        The corpus comes as a `Corpus` (see `set_corpus`), whose vectors were checked finite and
        unit-norm once when it was built; checking them here would re-read the whole corpus on
        every call, doubling the memory traffic of the (memory-bound) top-k.
        """
        users, _ = self.encode_users(batch, embeddings)
        best = corpus_top_k(
            users, corpus.embeddings, k, corpus_mask=corpus.mask, implementation=implementation
        )
        return RetrievalOutput(
            user_representation=users, top_k_indices=best.indices, top_k_scores=best.scores
        )


class Corpus(eqx.Module):
    """Item vectors to retrieve from, their post ids, and which items may be returned."""

    embeddings: Float[Array, "num_items emb"]
    post_ids: Int[Array, " num_items"]
    mask: Bool[Array, " num_items"]

    def lookup_post_ids(self, indices: Int[Array, "*shape"]) -> Int[Array, "*shape"]:
        """Post ids of retrieved indices; index -1 (nothing retrieved) gives post id 0."""
        return jnp.where(indices >= 0, self.post_ids[jnp.maximum(indices, 0)], 0)


def set_corpus(
    embeddings: Float[Array, "num_items emb"],
    post_ids: Int[Array, " num_items"] | None = None,
    mask: Bool[Array, " num_items"] | None = None,
    *,
    dtype: DTypeLike | None = None,
) -> Corpus:
    """Build a `Corpus`, checking shapes, and that every row the mask lets through is finite and
    unit-norm (as the candidate tower's output is); masked rows are never read.

    `post_ids` default to `0..N-1`, `mask` to all true. `dtype` stores the vectors in another
    dtype: `jnp.bfloat16` halves the corpus and is what the top-k kernel takes. Sharded
    `embeddings` keep their sharding.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"embeddings: expected a non-empty [num_items, emb], got shape {embeddings.shape}"
        )
    if not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise ValueError(f"embeddings: expected a floating dtype, got {embeddings.dtype}")
    num_items = embeddings.shape[0]
    post_ids = jnp.arange(num_items, dtype=jnp.int32) if post_ids is None else post_ids
    mask = jnp.ones((num_items,), bool) if mask is None else mask
    if post_ids.shape != (num_items,) or not jnp.issubdtype(post_ids.dtype, jnp.integer):
        raise ValueError(
            f"post_ids: expected integers of shape ({num_items},), "
            f"got {post_ids.dtype} {post_ids.shape}"
        )
    if mask.shape != (num_items,) or mask.dtype != bool:
        raise ValueError(f"mask: expected bool ({num_items},), got {mask.dtype} {mask.shape}")
    rows = np.asarray(embeddings, np.float32)[np.asarray(mask)]
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"embeddings: expected finite values in every unmasked row, got "
            f"{int((~finite).sum())} row(s) with NaN or inf"
        )
    if rows.size:
        worst = float(np.max(np.abs(np.linalg.norm(rows, axis=1) - 1.0)))
        if worst > UNIT_NORM_TOLERANCE:
            raise ValueError(
                f"embeddings: expected unit-norm rows (the candidate tower's output), "
                f"got a row whose norm is off by {worst:.3g}"
            )
    if dtype is not None:
        embeddings = embeddings.astype(dtype)
    return Corpus(embeddings=embeddings, post_ids=post_ids.astype(jnp.int32), mask=mask)
