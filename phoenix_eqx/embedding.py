"""From feature ids to the transformer's input tokens.

`HashEmbeddingTables` turns a `RecsysBatch` of ids into `RecsysEmbeddings` (new; the seed
expected embeddings looked up elsewhere). `InputEmbedding` holds the seed's input projections
and builds the `[user | history | candidates]` token sequence with its validity mask.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .initialisers import normal_init, truncated_normal_init
from .inputs import RecsysBatch, RecsysEmbeddings, ids_in_range

# The entity kinds with a table each; `HashEmbeddingTables.<kind>_table` is the kind's table.
TableKind = Literal["user", "post", "author"]


def lookup_rows(
    table: Float[Array, "rows emb"], ids: Int[Array, "*shape"], name: str
) -> Float[Array, "*shape emb"]:
    """Rows of a hash table after checking `ids` against its size (`name` is the argument named
    in the error); id 0 is padding and gives zeros."""
    ids = ids_in_range(ids, table.shape[0], name)
    return jnp.where((ids != 0)[..., None], jnp.take(table, ids, axis=0), 0.0)


class HashEmbeddingTables(eqx.Module):
    """One embedding table per entity kind (user, post, author), one row per hash value.

    Row 0 is padding and always looks up a zero vector; every hash function of an entity kind
    shares its kind's table. Rows start as normal draws with standard deviation `init_std`:
    1 matches the seed demo's standard-normal embeddings; trained tables learn faster from a
    small one, since an optimiser step moves a row by about the learning rate whatever its scale.
    """

    user_table: Float[Array, "user_rows emb"]
    post_table: Float[Array, "post_rows emb"]
    author_table: Float[Array, "author_rows emb"]

    def __init__(
        self,
        num_user_rows: int,
        num_post_rows: int,
        num_author_rows: int,
        emb_size: int,
        *,
        key: PRNGKeyArray,
        init_std: float = 1.0,
    ):
        if not init_std > 0:
            raise ValueError(f"init_std: expected > 0, got {init_std}")
        for name, rows in (
            ("num_user_rows", num_user_rows),
            ("num_post_rows", num_post_rows),
            ("num_author_rows", num_author_rows),
        ):
            if rows < 2:
                raise ValueError(f"{name}: expected >= 2 (row 0 is padding), got {rows}")
        user_key, post_key, author_key = jax.random.split(key, 3)
        self.user_table = normal_init(user_key, (num_user_rows, emb_size), init_std)
        self.post_table = normal_init(post_key, (num_post_rows, emb_size), init_std)
        self.author_table = normal_init(author_key, (num_author_rows, emb_size), init_std)

    def lookup(
        self, kind: TableKind, ids: Int[Array, "*shape"], name: str
    ) -> Float[Array, "*shape emb"]:
        """`lookup_rows` of the `kind` table (`ShardedHashEmbeddingTables` overrides it to look
        up rows split over devices, `training.TableRows` to look up a step's rows only)."""
        return lookup_rows(getattr(self, f"{kind}_table"), ids, name)

    def item_embeddings(
        self,
        post_hashes: Int[Array, "*items item_hashes"],
        author_hashes: Int[Array, "*items author_hashes"],
        name: str = "",
    ) -> tuple[Float[Array, "*items item_hashes emb"], Float[Array, "*items author_hashes emb"]]:
        """Post and author embeddings of items given by their hashes (any leading shape), as
        `PhoenixRetrievalModel.encode_items` takes them. `name` prefixes the arguments named in
        errors (e.g. `"batch.candidate_"`)."""
        if post_hashes.shape[:-1] != author_hashes.shape[:-1]:
            raise ValueError(
                f"{name}author_hashes: expected leading shape {post_hashes.shape[:-1]} like "
                f"{name}post_hashes, got {author_hashes.shape}"
            )
        return (
            self.lookup("post", post_hashes, f"{name}post_hashes"),
            self.lookup("author", author_hashes, f"{name}author_hashes"),
        )

    def __call__(self, batch: RecsysBatch) -> RecsysEmbeddings:
        history_post, history_author = self.item_embeddings(
            batch.history_post_hashes, batch.history_author_hashes, "batch.history_"
        )
        candidate_post, candidate_author = self.item_embeddings(
            batch.candidate_post_hashes, batch.candidate_author_hashes, "batch.candidate_"
        )
        return RecsysEmbeddings(
            user_embeddings=self.lookup("user", batch.user_hashes, "batch.user_hashes"),
            history_post_embeddings=history_post,
            candidate_post_embeddings=candidate_post,
            history_author_embeddings=history_author,
            candidate_author_embeddings=candidate_author,
        )


def _flatten_hashes(x: Float[Array, "*lead hashes emb"]) -> Float[Array, "*lead flat"]:
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def _project(
    x: Float[Array, "*lead features"], weight: Float[Array, "features emb"]
) -> Float[Array, "*lead emb"]:
    """The seed's reductions: project in float32, return in the input's dtype."""
    return jnp.dot(x.astype(jnp.float32), weight).astype(x.dtype)


class InputEmbedding(eqx.Module):
    """The seed's input layer: action and product-surface embeddings, user / history /
    candidate reductions (`proj_mat_1/3/2`). `candidate_projection` is None in the retrieval
    model, whose candidates go through the candidate tower instead.
    """

    action_projection: Float[Array, "actions emb"]
    product_surface_table: Float[Array, "surfaces emb"]
    user_projection: Float[Array, "user_features emb"]
    history_projection: Float[Array, "history_features emb"]
    candidate_projection: Float[Array, "candidate_features emb"] | None
    fprop_dtype: jnp.dtype = eqx.field(static=True)

    def __init__(self, config, *, with_candidates: bool, key: PRNGKeyArray):
        """`config`: a `PhoenixModelConfig` or `PhoenixRetrievalModelConfig`."""
        keys = jax.random.split(key, 5)
        hash_config, num_actions = config.hash_config, config.num_actions
        hu, hi, ha = (
            hash_config.num_user_hashes,
            hash_config.num_item_hashes,
            hash_config.num_author_hashes,
        )
        d = config.emb_size
        self.action_projection = truncated_normal_init(keys[0], (num_actions, d), num_actions)
        self.product_surface_table = normal_init(keys[1], (config.product_surface_vocab_size, d))
        self.user_projection = truncated_normal_init(keys[2], (hu * d, d), hu * d)
        history_features = (hi + ha + 2) * d
        self.history_projection = truncated_normal_init(
            keys[3], (history_features, d), history_features
        )
        candidate_features = (hi + ha + 1) * d
        self.candidate_projection = (
            truncated_normal_init(keys[4], (candidate_features, d), candidate_features)
            if with_candidates
            else None
        )
        self.fprop_dtype = jnp.dtype(config.fprop_dtype)

    def surface_embeddings(self, surfaces: Int[Array, "*shape"]) -> Float[Array, "*shape emb"]:
        """One-hot lookup: an index outside the vocabulary gives a zero vector, as in the seed."""
        one_hot = jax.nn.one_hot(surfaces, self.product_surface_table.shape[0])
        return jnp.dot(one_hot, self.product_surface_table).astype(self.fprop_dtype)

    def action_embeddings(
        self, actions: Float[Array, "*shape actions"]
    ) -> Float[Array, "*shape emb"]:
        """`(2a - 1) @ action_projection`, zeroed where no action is set."""
        signed = (2.0 * actions - 1.0).astype(jnp.float32)
        embedded = jnp.dot(signed, self.action_projection)
        any_action = jnp.any(actions != 0, axis=-1, keepdims=True)
        return (embedded * any_action).astype(self.fprop_dtype)

    def user_tokens(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch 1 emb"], Bool[Array, "batch 1"]]:
        flat = _flatten_hashes(embeddings.user_embeddings)[:, None, :]
        return _project(flat, self.user_projection), batch.user_valid[:, None]

    def history_tokens(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch history emb"], Bool[Array, "batch history"]]:
        features = jnp.concatenate(
            [
                _flatten_hashes(embeddings.history_post_embeddings),
                _flatten_hashes(embeddings.history_author_embeddings),
                self.action_embeddings(batch.history_actions),
                self.surface_embeddings(batch.history_product_surface),
            ],
            axis=-1,
        )
        return _project(features, self.history_projection), batch.history_valid

    def candidate_tokens(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch candidates emb"], Bool[Array, "batch candidates"]]:
        if self.candidate_projection is None:
            raise ValueError("candidate_tokens: this embedding has no candidate projection")
        features = jnp.concatenate(
            [
                _flatten_hashes(embeddings.candidate_post_embeddings),
                _flatten_hashes(embeddings.candidate_author_embeddings),
                self.surface_embeddings(batch.candidate_product_surface),
            ],
            axis=-1,
        )
        return _project(features, self.candidate_projection), batch.candidate_valid

    def prefix_tokens(
        self, batch: RecsysBatch, embeddings: RecsysEmbeddings
    ) -> tuple[Float[Array, "batch prefix emb"], Bool[Array, "batch prefix"]]:
        """`[user | history]` tokens in the forward dtype, and their validity."""
        user, user_valid = self.user_tokens(batch, embeddings)
        history, history_valid = self.history_tokens(batch, embeddings)
        tokens = jnp.concatenate([user.astype(history.dtype), history], axis=1)
        valid = jnp.concatenate([user_valid, history_valid], axis=1)
        return tokens.astype(self.fprop_dtype), valid
