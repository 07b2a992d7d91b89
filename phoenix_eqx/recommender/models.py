"""The two Phoenix models `Recommender.fit` trains, built from `FitOptions` and the log's
feature hashes, and the retriever's vectors of every item."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..config import HashConfig, PhoenixModelConfig, PhoenixRetrievalModelConfig, transformer_config
from ..data.feature_hashes import FeatureHashes
from ..training.models import TrainableRanker, TrainableRetriever
from .batches import author_hashes
from .options import FitOptions


def build_models(
    options: FitOptions, features: FeatureHashes, *, key: PRNGKeyArray
) -> tuple[TrainableRetriever, TrainableRanker]:
    """The untrained retriever and ranker `options` describe, with a hash per side feature."""
    retriever_key, ranker_key = jax.random.split(key)
    common = dict(
        emb_size=options.emb_size,
        history_seq_len=options.history_seq_len,
        fprop_dtype=jnp.float32,
        hash_config=HashConfig(
            num_user_hashes=1 + len(features.user_columns),
            num_item_hashes=1 + len(features.item_columns),
            num_author_hashes=1,
        ),
        product_surface_vocab_size=1,
    )
    sizes = (options.emb_size, options.key_size, options.num_heads, options.num_heads)
    retrieval_config = PhoenixRetrievalModelConfig(
        model=transformer_config(*sizes, options.num_layers, candidate_positions="sequential"),
        candidate_seq_len=1,
        user_pooling=options.user_pooling,
        **common,
    )
    # Shared candidate positions: a candidate's score ignores its slot and the padding.
    ranker_config = PhoenixModelConfig(
        model=transformer_config(*sizes, options.num_layers, candidate_positions="shared"),
        candidate_seq_len=max(options.num_retrieved, options.ranker_candidates),
        **common,
    )
    rows = (features.num_user_rows, features.num_post_rows, 2)
    init_std = options.table_init_std
    return (
        TrainableRetriever(retrieval_config, *rows, key=retriever_key, table_init_std=init_std),
        TrainableRanker(ranker_config, *rows, key=ranker_key, table_init_std=init_std),
    )


@eqx.filter_jit
def item_vectors(
    retriever: TrainableRetriever, item_hashes: Int[Array, "rows item_hashes"]
) -> Float[Array, "rows emb"]:
    """The unit vector of every item row (row 0, padding, included)."""
    return retriever.encode_items(item_hashes, author_hashes(item_hashes))
