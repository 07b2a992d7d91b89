"""Seed checkpoints: load the original Haiku parameter trees into phoenix_eqx models, and back.

A Haiku tree is `{module_path: {param_name: array}}` with the paths of
`seed_haiku_params.txt`, e.g.
`params["transformer/decoder_layer_0/multi_head_attention/query"]["w"]`.
"""

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .config import PhoenixModelConfig, PhoenixRetrievalModelConfig
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel
from .transformer import DecoderLayer

HaikuParams = Mapping[str, Mapping[str, np.ndarray | jax.Array]]

# (module path under `transformer/decoder_layer_{i}`, parameter name, the layer's leaf)
_LAYER_PARAMETERS: tuple[tuple[str, str, Callable[[DecoderLayer], jax.Array]], ...] = (
    ("multi_head_attention/query", "w", lambda layer: layer.attention.query.weight),
    ("multi_head_attention/key", "w", lambda layer: layer.attention.key.weight),
    ("multi_head_attention/value", "w", lambda layer: layer.attention.value.weight),
    ("multi_head_attention/linear", "w", lambda layer: layer.attention.output.weight),
    ("linear", "w", lambda layer: layer.ffn.gelu_proj.weight),
    ("linear_v", "w", lambda layer: layer.ffn.linear_proj.weight),
    ("linear_1", "w", lambda layer: layer.ffn.out_proj.weight),
    ("rms_norm", "scale", lambda layer: layer.pre_attention_norm.scale),
    ("rms_norm_1", "scale", lambda layer: layer.post_attention_norm.scale),
    ("rms_norm_2", "scale", lambda layer: layer.pre_ffn_norm.scale),
    ("rms_norm_3", "scale", lambda layer: layer.post_ffn_norm.scale),
)


def _embedding_parameters(root: str) -> list[tuple[str, str, Callable]]:
    return [
        (root, "action_projection", lambda m: m.embedding.action_projection),
        (root, "product_surface_embedding_table", lambda m: m.embedding.product_surface_table),
        (root, "proj_mat_1", lambda m: m.embedding.user_projection),
        (root, "proj_mat_3", lambda m: m.embedding.history_projection),
    ]


def _ranker_parameters() -> list[tuple[str, str, Callable]]:
    return [
        *_embedding_parameters("phoenix_model"),
        ("phoenix_model", "proj_mat_2", lambda m: m.embedding.candidate_projection),
        ("phoenix_model", "unembeddings", lambda m: m.unembedding),
        ("phoenix_model/rms_norm", "scale", lambda m: m.final_norm.scale),
    ]


def _retrieval_parameters() -> list[tuple[str, str, Callable]]:
    tower = "phoenix_retrieval_model/~build_candidate_representation/candidate_tower"
    return [
        *_embedding_parameters("phoenix_retrieval_model"),
        (tower, "candidate_tower_projection_1", lambda m: m.candidate_tower.projection_1),
        (tower, "candidate_tower_projection_2", lambda m: m.candidate_tower.projection_2),
    ]


def _layer_path(index: int, module: str) -> str:
    return f"transformer/decoder_layer_{index}/{module}"


def _check_config(config) -> None:
    if config.model.qk_norm:
        raise ValueError("config.model.qk_norm: the seed has no qk-norm parameters; expected False")


def _load(template: eqx.Module, params: HaikuParams, model_parameters) -> eqx.Module:
    """Fill `template`, the model's shapes from `eqx.filter_eval_shape` (no random init of
    weights that are replaced anyway), with the seed's parameters."""
    num_layers = template.transformer.num_layers
    expected: dict[tuple[str, str], tuple[int, ...]] = {}
    for module, name, leaf in model_parameters:
        expected[module, name] = leaf(template).shape
    for module, name, leaf in _LAYER_PARAMETERS:
        shape = leaf(template.transformer.layers).shape[1:]
        for index in range(num_layers):
            expected[_layer_path(index, module), name] = shape

    given = {(module, name) for module, names in params.items() for name in names}
    missing = sorted(set(expected) - given)
    extra = sorted(given - set(expected))
    if missing or extra:
        raise ValueError(
            "params: expected the seed's parameter tree for this config; "
            f"missing {[f'{m}/{n}' for m, n in missing]}, "
            f"unexpected {[f'{m}/{n}' for m, n in extra]}"
        )
    for (module, name), shape in expected.items():
        actual = tuple(np.shape(params[module][name]))
        if actual != shape:
            raise ValueError(f"params[{module!r}][{name!r}]: expected shape {shape}, got {actual}")

    def as_f32(array) -> jax.Array:
        return jnp.asarray(array, jnp.float32)

    leaves, values = [], []
    for module, name, leaf in model_parameters:
        leaves.append(leaf)
        values.append(as_f32(params[module][name]))
    for module, name, leaf in _LAYER_PARAMETERS:
        leaves.append(lambda m, leaf=leaf: leaf(m.transformer.layers))
        stacked = [as_f32(params[_layer_path(i, module)][name]) for i in range(num_layers)]
        values.append(jnp.stack(stacked))
    model = eqx.tree_at(lambda m: [leaf(m) for leaf in leaves], template, values)
    # The template is abstract: a leaf the tables above do not name would stay a shape.
    abstract = [x for x in jax.tree.leaves(model) if isinstance(x, jax.ShapeDtypeStruct)]
    if abstract:
        raise RuntimeError(f"compat: {len(abstract)} model arrays have no seed parameter")
    return model


def _export(model: eqx.Module, model_parameters) -> dict[str, dict[str, np.ndarray]]:
    params: dict[str, dict[str, np.ndarray]] = {}
    for module, name, leaf in model_parameters:
        params.setdefault(module, {})[name] = np.asarray(leaf(model))
    for module, name, leaf in _LAYER_PARAMETERS:
        stacked = np.asarray(leaf(model.transformer.layers))
        for index in range(model.transformer.num_layers):
            params.setdefault(_layer_path(index, module), {})[name] = stacked[index]
    return params


def ranker_from_haiku(params: HaikuParams, config: PhoenixModelConfig) -> PhoenixModel:
    """The seed's `PhoenixModel` parameters as a `phoenix_eqx.PhoenixModel`.

    Raises a ValueError naming every missing, unexpected or mis-shaped parameter.
    """
    _check_config(config)
    template = eqx.filter_eval_shape(PhoenixModel, config, key=jax.random.key(0))
    return _load(template, params, _ranker_parameters())


def retrieval_from_haiku(
    params: HaikuParams, config: PhoenixRetrievalModelConfig
) -> PhoenixRetrievalModel:
    """The seed's `PhoenixRetrievalModel` parameters as a `phoenix_eqx.PhoenixRetrievalModel`."""
    _check_config(config)
    template = eqx.filter_eval_shape(PhoenixRetrievalModel, config, key=jax.random.key(0))
    return _load(template, params, _retrieval_parameters())


def ranker_to_haiku(model: PhoenixModel) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of `ranker_from_haiku`: a Haiku-layout tree for the seed's code."""
    return _export(model, _ranker_parameters())


def retrieval_to_haiku(model: PhoenixRetrievalModel) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of `retrieval_from_haiku`."""
    return _export(model, _retrieval_parameters())


def unflatten_haiku_params(
    flat: Mapping[str, np.ndarray], prefix: str = ""
) -> dict[str, dict[str, np.ndarray]]:
    """`{"module/path/name": array}` (e.g. an `.npz`) to Haiku's `{"module/path": {"name": ...}}`.

    Only keys starting with `prefix` are taken, with the prefix removed.
    """
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        module, _, name = key[len(prefix) :].rpartition("/")
        if not module:
            raise ValueError(f"flat: expected keys 'module/path/name', got {key!r}")
        params.setdefault(module, {})[name] = np.asarray(value)
    return params
