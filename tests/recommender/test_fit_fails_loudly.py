"""`fit` fails loudly: a non-finite loss stops it at the first such step, naming where and the
likely cause, and `time_budget_s` caps its wall-clock time up to what cannot be capped (each
stage's step in flight, compilation included, and its first validation)."""

import dataclasses
import io
import itertools
import math
import re
import time
from collections.abc import Iterator

import jax.numpy as jnp
import pytest
from rich.console import Console

import phoenix_eqx as px
from phoenix_eqx.recommender.validation import Validation
from phoenix_eqx.training import loop
from phoenix_eqx.training.loop import NonFiniteLossError, Run, Schedule, Stage, run_stage

# Slack for what the toy stages cannot control on a shared 2-core machine: a sleep that wakes
# late, a step dispatched late under load. Measured here, the deadline test's stage ended
# 0.2-0.4 s before its deadline (the next epoch would not have fit), never after it.
JITTER_S = 0.3


@pytest.mark.parametrize(
    ("stage", "rates", "rate"),
    [
        ("retrieval", dict(learning_rate=1e30), "1e+30"),
        # The ranker steps with its own rate (retrieval's sane one trains it to the end). Its
        # zero-initialised head is the first thing a step moves: scores overflow only once
        # that head is as large as float32 goes.
        ("ranker", dict(epochs=1, ranker_learning_rate=3e38), "3e+38"),
    ],
)
def test_a_diverging_fit_stops_at_its_first_non_finite_loss_and_says_where_and_why(
    tiny_options, walk_log, stage, rates, rate
):
    users, items, times = walk_log(60, 40, 8)
    options = dataclasses.replace(tiny_options, **{"epochs": 2, **rates})
    # 60 users' windows of width 8 make two steps an epoch; the first step's loss is computed
    # before its oversized update, so the second is the first non-finite one.
    with pytest.raises(NonFiniteLossError) as raised:
        px.Recommender.fit(users, items, times, options=options)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert message.startswith(f"{stage} stage, epoch 1, step 2 of 2: the training loss is ")
    assert f"learning rate ({rate}) is too high" in message
    assert "table_init_std" in message and "inputs are not finite" in message


def _toy_stage(
    deadline: float,
    *,
    infinite_at: tuple[int, int] | None = None,
    step_s: float = 0.0,
    pause_until: dict[tuple[int, int], float] | None = None,
    validation_s: float = 0.0,
) -> Stage:
    """A stage of 10 steps an epoch fitting a 2-vector to ones: the loss is infinite at
    `infinite_at` (epoch, step); each step's example takes `step_s` to make, or until
    `pause_until[(epoch, step)]` (`perf_counter` seconds); a validation takes
    `validation_s` and always scores 0.5 (no epoch is better than another)."""
    epochs = itertools.count(1)

    def epoch_examples() -> Iterator[dict[str, jnp.ndarray]]:
        epoch = next(epochs)
        for step in range(1, 11):
            wake = (pause_until or {}).get((epoch, step))
            time.sleep(step_s if wake is None else max(wake - time.perf_counter(), 0.0))
            offset = math.inf if (epoch, step) == infinite_at else 0.0
            yield {"x": jnp.ones(2), "offset": jnp.asarray(offset, jnp.float32)}

    def evaluate(model: dict[str, jnp.ndarray]) -> dict[str, float]:
        time.sleep(validation_s)
        return {"hr@10": 0.5, "ndcg@10": 0.5}

    return Stage(
        name="toy",
        schedule=Schedule(learning_rate=0.1, decay_share=0.0),
        epochs=1000,
        steps=10,
        patience=1000,
        deadline=deadline,
        epoch_examples=epoch_examples,
        evaluate=evaluate,
    )


def _toy_objective(
    model: dict[str, jnp.ndarray], example: dict[str, jnp.ndarray]
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    value = jnp.sum((model["w"] - example["x"]) ** 2) + example["offset"]
    return value, {"loss": value, "targets": jnp.asarray(1)}


def _toy_run(output: io.StringIO | None = None) -> Run:
    console = Console(file=output, width=200) if output else Console(quiet=True)
    return Run(console, False, time.perf_counter(), [], None)


def test_the_non_finite_loss_error_names_the_epoch_and_the_step_within_it():
    stage = _toy_stage(math.inf, infinite_at=(2, 3))
    with pytest.raises(NonFiniteLossError, match=r"^toy stage, epoch 2, step 3 of 10: .* inf "):
        run_stage({"w": jnp.zeros(2)}, _toy_objective, stage, _toy_run())


def test_a_deadline_keeps_the_last_validations_time_free_so_the_cut_epoch_ends_by_it():
    # Epochs of 10 x 0.05 s steps and 0.6 s validations: the first epoch and validation end
    # about 1.5 s in (the step's compilation included), the deadline falls inside a later
    # epoch. Stopping only at the deadline would end 0.6 s (a validation) past it.
    budget, validation_s = 5.0, 0.6
    run = _toy_run()
    deadline = run.started + budget
    stage = _toy_stage(deadline, step_s=0.05, validation_s=validation_s)
    run_stage({"w": jnp.zeros(2)}, _toy_objective, stage, run)
    ended = time.perf_counter()
    assert len(run.history) >= 2  # the cut epoch was validated, after at least one other
    assert JITTER_S < validation_s
    assert ended - deadline < JITTER_S
    assert run.history[-1][0] <= budget + JITTER_S


def test_an_epoch_cut_past_the_deadline_is_not_validated_and_the_best_is_kept():
    # Epoch 2's second example comes only after the deadline: validating that epoch would
    # overrun it, and epoch 1 was validated, so the stage ends there with epoch 1.
    output = io.StringIO()
    run = _toy_run(output)
    deadline = run.started + 3.0
    stage = _toy_stage(deadline, pause_until={(2, 2): deadline + 0.2}, validation_s=0.2)
    model, metrics = run_stage({"w": jnp.zeros(2)}, _toy_objective, stage, run)
    assert time.perf_counter() - deadline < 0.2 + JITTER_S
    assert [record[1:3] for record in run.history] == [("toy", 1)]
    assert metrics == {"hr@10": 0.5, "ndcg@10": 0.5}
    assert "toy epoch 2: loss" in output.getvalue()
    assert "not validated: past the deadline (epoch 1, the best, kept)" in output.getvalue()


def test_a_time_budget_caps_fit_up_to_the_steps_and_validations_it_cannot_cut(
    monkeypatch, capsys, tiny_options, walk_log
):
    """A 3 s budget on a log that trains for minutes without one (100 epochs of 63 steps, then
    the ranker). What fit cannot cap is measured in this very fit, so the bound holds on a
    loaded machine as on an idle one: the time before the first step, one step in flight
    (with its compilation: 4-13 s here, by load) and one validation (its first, with
    compilation: 1-5 s here) of the stage running when the budget runs out."""
    timings: dict[str, list[float]] = {"step starts": [], "step": [], "validation": []}
    make_train_step = loop.make_train_step

    def timed_make_train_step(*args):
        step = make_train_step(*args)

        def timed_step(*step_args):
            started = time.perf_counter()
            out = step(*step_args)
            float(out[2]["loss"])
            timings["step starts"].append(started)
            timings["step"].append(time.perf_counter() - started)
            return out

        return timed_step

    metrics = Validation.metrics

    def timed_metrics(self, *args, **kwargs):
        started = time.perf_counter()
        out = metrics(self, *args, **kwargs)
        timings["validation"].append(time.perf_counter() - started)
        return out

    monkeypatch.setattr(loop, "make_train_step", timed_make_train_step)
    monkeypatch.setattr(Validation, "metrics", timed_metrics)
    users, items, times = walk_log(2000, 200, 32)
    budget = 3.0
    options = dataclasses.replace(
        tiny_options,
        history_seq_len=32,
        epochs=100,
        ranker_epochs=10,
        time_budget_s=budget,
        verbose=True,
    )
    started = time.perf_counter()
    rec = px.Recommender.fit(users, items, times, options=options)
    seconds = time.perf_counter() - started
    setup = timings["step starts"][0] - started
    uncapped = max(timings["step"]) + max(timings["validation"])
    # 1 s more: building the Recommender and the console lines, and the clock read between
    # two timings (0.0-0.1 s measured here, under load).
    assert seconds <= max(budget, setup) + uncapped + 1.0
    # The ranker has validation metrics if and only if it trained (and so validated).
    assert {record[1] for record in rec.validation_history} == set(rec.validation)
    report = r"fit: done in \d+\.\d s of a 3 s budget \((within it|\d+\.\d s over)\)"
    assert re.search(report, capsys.readouterr().out)
