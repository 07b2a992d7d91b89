"""Jitted train and eval steps for any model, objective and optax optimiser.

A step is a pure function of `(model, opt_state, example)`: no Python-side state, so sharding
the example over a `jax.sharding.Mesh` (data parallelism) needs no change here.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import optax
from jaxtyping import PyTree, Scalar

Model = TypeVar("Model", bound=eqx.Module)
Example = TypeVar("Example")
Aux = dict[str, Scalar]
Objective = Callable[[Model, Example], tuple[Scalar, Aux]]
TrainStep = Callable[[Model, optax.OptState, Example], tuple[Model, optax.OptState, Aux]]


def trainable(model: PyTree) -> PyTree:
    """The model's trainable leaves (floating arrays); everything else becomes None."""
    return eqx.filter(model, eqx.is_inexact_array)


def init_optimizer(optimizer: optax.GradientTransformation, model: PyTree) -> optax.OptState:
    """The optimiser state for the model's trainable leaves."""
    return optimizer.init(trainable(model))


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation) -> TrainStep:
    """A jitted `step(model, opt_state, example) -> (model, opt_state, aux)`.

    `objective(model, example)` returns `(loss, aux)`; gradients are taken with respect to the
    model's floating arrays. `aux` gains `grad_norm`, the global norm of the gradients.
    """

    @eqx.filter_jit
    def train_step(model: Any, opt_state: optax.OptState, example: Any):
        (_, aux), grads = eqx.filter_value_and_grad(objective, has_aux=True)(model, example)
        updates, opt_state = optimizer.update(grads, opt_state, trainable(model))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, {**aux, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_eval_step(objective: Objective) -> Callable[[Model, Example], Aux]:
    """A jitted `step(model, example) -> aux` evaluating the objective without gradients."""

    @eqx.filter_jit
    def eval_step(model: Any, example: Any) -> Aux:
        _, aux = objective(model, example)
        return aux

    return eval_step
