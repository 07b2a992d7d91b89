"""The one epoch loop every training stage runs: Adam steps, a learning-rate schedule over the
stage's time or steps, validation after each epoch, early stopping, a deadline, a stop at the
first non-finite loss, a progress display, and data parallelism over a mesh.

`Recommender.fit` runs it once per stage (retrieval, then the ranker); the command line
(`python -m phoenix_eqx.train`) runs `Recommender.fit`.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import PyTree
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import distributed
from .row_updates import RowsOf, make_row_update_step
from .steps import Objective, TrainStep, init_optimizer, make_train_step

# One validation of a stage: (seconds since the run started, stage, epoch, validation HR@10).
ValidationRecord = tuple[float, str, int, float]


class NonFiniteLossError(ValueError):
    """A training step's loss was NaN or infinite. Every later step would carry the non-finite
    values on, and a fit that went on would "succeed" with a model whose every score is NaN,
    so the stage stops at the first such step and names it."""


def _matrices(params: PyTree) -> PyTree:
    """True for the leaves weight decay shrinks: arrays of two or more dimensions."""
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a stage's optimiser steps: Adam at `learning_rate`, gradients clipped to global
    norm 1, the rate held and then, over the stage's last `decay_share` (0: never, 1: the
    whole stage), lowered along a half cosine to zero. `weight_decay` > 0 makes it AdamW:
    every matrix (embedding tables included; not the norms' scales, biases or the
    temperature) shrinks by `rate * weight_decay` of itself each step."""

    learning_rate: float
    decay_share: float
    weight_decay: float = 0.0

    def optimizer(self) -> optax.GradientTransformation:
        """Clipped Adam(W) whose learning rate lives in its state (`rate` sets it each step)."""
        if self.weight_decay == 0:
            adam = optax.inject_hyperparams(optax.adam)(learning_rate=self.learning_rate)
        else:
            # A callable hyperparameter would be read as a schedule of the step: the mask is static.
            adam = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
                learning_rate=self.learning_rate,
                weight_decay=self.weight_decay,
                mask=_matrices,
            )
        return optax.chain(optax.clip_by_global_norm(1.0), adam)

    def rate(self, progress: float) -> jax.Array:
        """The learning rate once `progress` (0 to 1) of the stage is done."""
        share = self.decay_share
        into_decay = 0.0 if share == 0 else max(min(progress, 1.0) - (1.0 - share), 0.0) / share
        rate = self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * into_decay))
        return jnp.asarray(rate, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Run:
    """What every stage of one training run shares: the console its epoch lines go to, whether
    progress bars show, when the run started, the validation history (appended to), the mesh
    it trains over (None: one device), and each stage's seconds from its start to its first
    step's loss and of its first validation (appended to). Both compile, so no deadline cuts
    them: a later stage's may be judged by an earlier one's."""

    console: Console
    verbose: bool
    started: float
    history: list[ValidationRecord]
    mesh: Mesh | None
    first_step_s: list[float] = dataclasses.field(default_factory=list)
    first_validation_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def startup_s(self) -> list[float]:
        """Each stage's startup: its first step and its first validation."""
        return [
            step + validation
            for step, validation in zip(self.first_step_s, self.first_validation_s, strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, how its optimiser steps, up to `epochs` passes of
    `steps` examples from `epoch_examples()`, `evaluate` after each epoch (validation HR@10
    and NDCG@10 of a replica of the model), stopping after `patience` epochs without a better
    HR@10 or at `deadline` (`time.perf_counter` seconds; inf: none). With `rows_of`, steps
    update only the table rows it names (`make_row_update_step`)."""

    name: str
    schedule: Schedule
    epochs: int
    steps: int
    patience: int
    deadline: float
    epoch_examples: Callable[[], Iterator[PyTree]]
    evaluate: Callable[[PyTree], dict[str, float]]
    rows_of: RowsOf | None = None


def progress_display(verbose: bool) -> Progress:
    """The progress bar of a training epoch: steps done, the recent mean loss, time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not verbose,
    )


def run_stage(
    model: PyTree, objective: Objective, stage: Stage, run: Run
) -> tuple[PyTree, dict[str, float]]:
    """Train `model` on `objective` as `stage` says; returns the epoch with the best validation
    HR@10 (of equal HR@10, the better NDCG@10: it tells apart orders that HR@10, which only
    asks whether the item is in the top 10, cannot) and its metrics. The objective's aux has
    the step's "loss" and "targets" (how many it trained); a non-finite loss raises
    `NonFiniteLossError` at once (the loop reads every step's loss anyway, so the check costs
    no device sync). The rate follows `stage.schedule`
    over the stage's progress: the larger of its time used (to `deadline`, counting the
    validation time kept free before it, so a decay ends where training does) and its steps
    done (of `epochs * steps`).

    The deadline is a cap, checked after every step: the time of the stage's last validation
    is kept free before it, so that the epoch the deadline cuts is validated by the deadline.
    What it cannot cap: the step in flight (with its compilation, if its shapes are new) and,
    while the stage has no validated epoch, one validation; past the deadline a stage that has
    one skips validating the cut epoch and keeps its best epoch."""
    optimizer = stage.schedule.optimizer()
    step = _train_step(objective, optimizer, run.mesh, stage.rows_of)
    # A row-update step consumes the model it is given: keep the caller's.
    model = model if stage.rows_of is None else _copy(model)
    opt_state = init_optimizer(optimizer, model)
    best, best_metrics, best_epoch, stale = model, {"hr@10": -1.0, "ndcg@10": -1.0}, 0, 0
    clock = StageClock(time.perf_counter(), stage.deadline, run.mesh)
    time_used, steps_done, first_step_s = 0.0, 0, 0.0
    # The last validation's seconds (0 before the first): kept free before the deadline.
    validation_s = 0.0
    with progress_display(run.verbose) as progress:
        for epoch in range(1, stage.epochs + 1):
            task = progress.add_task(f"{stage.name} {epoch}", total=stage.steps, loss=math.nan)
            losses, started, trained = [], time.perf_counter(), 0
            for example in stage.epoch_examples():
                done = max(time_used, steps_done / (stage.epochs * stage.steps))
                opt_state = optax.tree.set(opt_state, learning_rate=stage.schedule.rate(done))
                model, opt_state, aux = step(model, opt_state, example)
                steps_done += 1
                loss = float(aux["loss"])
                if steps_done == 1:
                    first_step_s = time.perf_counter() - clock.start
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        _non_finite_message(stage, epoch, len(losses) + 1, loss)
                    )
                losses.append(loss)
                trained += int(aux["targets"])
                progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
                time_used = clock.fraction_used(validation_s)
                if time_used >= 1.0:
                    break
            rate = trained / (time.perf_counter() - started)
            summary = f"{stage.name} epoch {epoch}: loss {np.mean(losses):.4f}"
            if best_epoch and clock.fraction_used() >= 1.0:
                run.console.print(
                    f"{summary}  not validated: past the deadline (epoch {best_epoch}, the best, "
                    f"kept)"
                )
                break
            validation_started = time.perf_counter()
            replica = _replica(model, run.mesh)
            if stage.rows_of is not None and run.mesh is None:
                replica = _copy(replica)  # kept past the next step, which consumes `model`
            metrics = stage.evaluate(replica)
            validation_s = time.perf_counter() - validation_started
            if not best_epoch:
                run.first_step_s.append(first_step_s)
                run.first_validation_s.append(validation_s)
            seconds = time.perf_counter() - run.started
            run.history.append((seconds, stage.name, epoch, metrics["hr@10"]))
            run.console.print(
                f"{summary}  valid HR@10 {metrics['hr@10']:.4f}  NDCG@10 "
                f"{metrics['ndcg@10']:.4f}  ({rate:,.0f} targets/s)"
            )
            if _quality(metrics) > _quality(best_metrics):
                best, best_metrics, best_epoch, stale = replica, metrics, epoch, 0
            else:
                stale += 1
            if stale >= stage.patience or clock.fraction_used(validation_s) >= 1.0:
                break
    return best, best_metrics


def _quality(metrics: dict[str, float]) -> tuple[float, float]:
    """What a better epoch has more of: HR@10, then NDCG@10."""
    return metrics["hr@10"], metrics["ndcg@10"]


def _non_finite_message(stage: Stage, epoch: int, step: int, loss: float) -> str:
    """Where the loss stopped being finite and what usually makes it so."""
    return (
        f"{stage.name} stage, epoch {epoch}, step {step} of {stage.steps}: the training loss is "
        f"{loss} (not finite). Likely causes: the learning rate "
        f"({stage.schedule.learning_rate:g}) is too high, the initial embeddings are too large "
        f"(table_init_std), or the inputs are not finite"
    )


def _train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None,
    rows_of: RowsOf | None,
) -> TrainStep:
    """`make_train_step` (`make_row_update_step` with `rows_of`), data-parallel over the
    mesh's batch axis when there is one."""
    step = (
        make_train_step(objective, optimizer)
        if rows_of is None
        else make_row_update_step(objective, optimizer, rows_of)
    )
    return step if mesh is None else distributed.data_parallel(step, mesh=mesh)


def _copy(tree: PyTree) -> PyTree:
    """`tree` with its arrays copied."""
    return jax.tree.map(
        lambda leaf: jnp.array(leaf, copy=True) if eqx.is_array(leaf) else leaf, tree
    )


def on_mesh(example: PyTree, mesh: Mesh | None) -> PyTree:
    """A step's whole batch, which every process builds alike (same seed, same draws), as the
    global batch over the mesh: each process contributes its `process_local_slice` of every
    leaf's rows (leaves may differ in rows: a ranker step's users and their cuts). Unchanged
    without a mesh."""
    if mesh is None:
        return example
    local = jax.tree.map(
        lambda leaf: leaf[distributed.process_local_slice(leaf.shape[0], mesh)], example
    )
    return distributed.make_global_batch(local, mesh)


def _replica(model: PyTree, mesh: Mesh | None) -> PyTree:
    """The model as this process evaluates and keeps it: its own replica, on one device."""
    return model if mesh is None else distributed.local_replica(model)


@dataclasses.dataclass(frozen=True)
class StageClock:
    """A stage's time from `start` to `deadline` (`perf_counter` seconds; inf: no limit)."""

    start: float
    deadline: float
    mesh: Mesh | None

    def fraction_used(self, reserve: float = 0.0) -> float:
        """How much of the stage's time has passed once `reserve` more seconds are spent
        (0 without a deadline; >= 1: stop). With several processes, process 0's clock (and
        reserve) decides for all: one stopping alone would leave the others waiting in the
        next step's collectives, and the learning rate it sets must be the same everywhere."""
        if math.isinf(self.deadline):
            return 0.0
        used = (time.perf_counter() + reserve - self.start) / max(self.deadline - self.start, 1e-9)
        if self.mesh is None or jax.process_count() == 1:
            return used
        return float(multihost_utils.broadcast_one_to_all(np.float64(used)))
