"""One prepared GPU session: check everything, then time every kernel and the whole model beside
their peers and the card's own ceilings, in one run (docs/benchmarks.md).

On the device machine: `bash tools/gpu_session.sh [--quick]` (sets up the carried wheels, then
runs `python -m benchmarks.gpu_session`). On the CPU: `python -m benchmarks.gpu_session
--dry-run` runs the same code path at tiny shapes with the kernels in Mosaic GPU's interpreter.

In order, writing one JSON (rewritten after every section) and printing tables at the end;
`--sections` picks which of 2-4 run (each complete with its checks and peers):
1. ceilings: the card's copy bandwidth (an elementwise bf16 read + write, bytes read and
   written) and bf16 matmul rate, measured in this run;
2. attention: the kernel's output and gradients checked against the float32 reference at the
   four configs of docs/benchmarks.md, and the cached-candidate op
   (`phoenix_eqx.kernels.cached_candidate_attention`) against the candidate rows of the
   reference on `[prefix | candidates]`; then fwd and fwd+bwd of ours, XLA (the seed's dense
   formulation) and the peers (cuDNN `jax.nn.dot_product_attention`, tokamax mosaic, torch
   flex_attention), in useful TFLOP/s and as a fraction of the measured matmul rate;
3. top-k: the kernel checked against the exact chunked reference at the 13 rows of section 2;
   then ours (`"pallas"`), `"auto"`, XLA stable / unstable and torch mm + topk, as multiples of
   the floor max(corpus bytes / copy bandwidth, 2BND / matmul rate);
4. end to end (`e2e` config, `benchmarks.e2e`): ranker forward and retrieval, the XLA
   path, the kernel path (bf16 corpus) and the prefix-cached ranker, each checked against an
   independent path first, in candidates/s and users/s.
A peer that is not installed (or has no GPU) is reported as skipped with the reason.
Every time is device time per call over back-to-back calls (`benchmarks.timing.device_time`:
CUPTI for JAX, CUDA events for torch). A time budget (`--budget-s`) keeps the run inside the lease:
an item that would start after it is recorded as skipped, with the reason; checks always run.
Exit status 1 when a check of ours fails.
"""

import argparse
import atexit
import dataclasses
import functools
import importlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from phoenix_eqx.kernels import cached_candidate_attention
from phoenix_eqx.kernels.candidate_attention.reference import candidate_attention_reference
from phoenix_eqx.kernels.dispatch import is_hopper_gpu

from benchmarks import attention as attention_bench
from benchmarks import e2e as e2e_bench
from benchmarks import shapes
from benchmarks import topk as topk_bench
from benchmarks.timing import device_time, kernel_mode, run_metadata, write_json

OURS = "ours"
ATTENTION_BASELINE = "xla"
ATTENTION_PEERS = ("cudnn", "tokamax-mosaic", "flex")
TOPK_OURS = ("pallas", "auto", "xla_stable", "xla_unstable")
TOPK_PEERS = ("torch",)
SECTIONS = ("attention", "topk", "e2e")
LOGIT_CAP = attention_bench.LOGIT_CAP
TOLERANCE = attention_bench.TOLERANCE


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures, and how many calls it times."""

    mode: str
    attention: dict[str, shapes.AttentionConfig]
    topk_rows: list[tuple[int, int, int]]
    e2e: shapes.ModelShapes
    copy_elements: int
    matmul_size: int
    iters: int
    warmup: int
    # Longest a timing pass of one item may take (seconds), for the slow XLA top-k rows.
    max_seconds: float | None
    budget_s: float
    interpret: bool
    sections: tuple[str, ...] = SECTIONS


def make_plan(
    mode: str,
    budget_s: float | None,
    iters: int | None,
    sections: tuple[str, ...] = SECTIONS,
) -> Plan:
    configs = shapes.ATTENTION_CONFIGS
    if mode == "dry-run":
        tiny = shapes.AttentionConfig(1, 48, 16, 1, 1, 64)
        plan = Plan(
            mode,
            {"tiny": tiny},
            [(2, 512, 10)],
            shapes.E2E_QUICK,
            copy_elements=1 << 20,
            matmul_size=128,
            iters=1,
            warmup=0,
            max_seconds=None,
            budget_s=600.0,
            interpret=True,
        )
    elif mode == "quick":
        plan = Plan(
            mode,
            {name: configs[name] for name in ("rank-serve", "prod-train")},
            [(128, 1_000_000, 100), (1, 10_000_000, 100), (1024, 10_000_000, 1000)],
            shapes.E2E,
            copy_elements=1 << 30,
            matmul_size=8192,
            iters=5,
            warmup=1,
            max_seconds=0.5,
            budget_s=240.0,
            interpret=False,
        )
    else:
        plan = Plan(
            mode,
            dict(configs),
            list(shapes.TOPK_SHAPES),
            shapes.E2E,
            copy_elements=1 << 30,
            matmul_size=8192,
            iters=20,
            warmup=2,
            max_seconds=1.0,
            budget_s=330.0,
            interpret=False,
        )
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise ValueError(f"sections: expected some of {SECTIONS}, got {tuple(sections)}")
    overrides: dict = {"sections": tuple(name for name in SECTIONS if name in sections)}
    if budget_s is not None:
        overrides["budget_s"] = budget_s
    if iters is not None:
        overrides["iters"] = iters
    return dataclasses.replace(plan, **overrides)


class Budget:
    """Seconds since the start, against the plan's budget for starting new timed items."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> str | None:
        """Why a new item may not start (None if it may)."""
        if self.elapsed() < self.seconds:
            return None
        return f"time budget spent ({self.elapsed():.0f} s of {self.seconds:.0f} s)"


def _error(failure: Exception) -> dict:
    message = f"{type(failure).__name__}: {failure}".strip()
    return {"status": "error", "detail": message.splitlines()[0][:300], "message": message[:4000]}


# 1. Ceilings -----------------------------------------------------------------------------------


def measure_ceilings(plan: Plan) -> tuple[topk_bench.Ceilings, dict]:
    """The copy bandwidth (bytes read + written per second by an elementwise bf16 kernel, which
    XLA cannot turn into a plain memcpy that CUPTI would not see) and the bf16 matmul rate."""
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (plan.copy_elements,), jnp.bfloat16)
    copy = jax.jit(lambda x: x + jnp.bfloat16(1))
    timing = dict(iters=max(plan.iters, 1), warmup=max(plan.warmup, 1))
    copy_time = device_time(copy, x, **timing)
    copy_rate = 2 * x.nbytes / (copy_time.ms * 1e-3)
    del x
    n = plan.matmul_size
    a = jax.random.normal(keys[1], (n, n), jnp.bfloat16)
    b = jax.random.normal(keys[2], (n, n), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul)  # bf16 out, float32 accumulation
    matmul_time = device_time(matmul, a, b, **timing)
    matmul_rate = 2 * n**3 / (matmul_time.ms * 1e-3)
    ceilings = topk_bench.Ceilings(copy_rate, matmul_rate, "measured in this run")
    details = {
        "copy_bytes_per_s": copy_rate,
        "copy": {"bytes_moved": 2 * plan.copy_elements * 2, "timing": copy_time.as_dict()},
        "matmul_flop_per_s": matmul_rate,
        "matmul": {"shape": [n, n, n], "dtype": "bfloat16", "timing": matmul_time.as_dict()},
    }
    return ceilings, details


# 2. Checks -------------------------------------------------------------------------------------


def _check(name: str, actual: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    error = attention_bench.relative_error(actual, expected)
    passed = bool(error <= TOLERANCE)
    return {
        "name": name,
        "rel_error": error if math.isfinite(error) else None,
        "tolerance": TOLERANCE,
        "passed": passed,
    }


def check_attention(name: str, problem, reference, ours) -> tuple[list[dict], dict]:
    """Our kernel's forward and gradients at one config; the checked runners for timing."""
    checks, runners = [], {}
    for backward, label in ((False, "output"), (True, "gradients")):
        runner, result = attention_bench.check_pass(ours, problem, reference, backward)
        record = {
            "name": f"attention {name} {label}",
            "rel_error": result.get("rel_error"),
            "tolerance": TOLERANCE,
            "passed": runner is not None,
        }
        if runner is None:
            record["detail"] = result.get("detail")
        else:
            runners[backward] = (runner, result)
        checks.append(record)
    return checks, runners


def check_cached_attention(name: str, problem) -> list[dict]:
    """`cached_candidate_attention` (the kernel path) against the candidate rows of the f32
    reference on `[prefix | candidates]`: output, and gradients of q, k, v and the prefix's
    keys and values. Some candidates are invalid (they attend the prefix only)."""
    config = problem.config
    prefix = config.prefix
    candidate_valid = problem.key_valid[:, prefix:] & jax.random.bernoulli(
        jax.random.key(7), 0.9, (config.batch, config.candidates)
    )
    prefix_valid = problem.key_valid[:, :prefix]
    inputs = (
        problem.q[:, prefix:],
        problem.k[:, prefix:],
        problem.v[:, prefix:],
        problem.k[:, :prefix],
        problem.v[:, :prefix],
    )
    cotangent = problem.cotangent[:, prefix:]
    options = dict(scale=problem.scale, logit_cap=LOGIT_CAP, cap_method="tanh")

    # The masks go in as arguments: closed over, XLA would constant-fold them (seconds each).
    def ours(q, k, v, prefix_keys, prefix_values, prefix_valid, candidate_valid):
        return cached_candidate_attention(
            q,
            k,
            v,
            prefix_keys,
            prefix_values,
            prefix_valid=prefix_valid,
            candidate_valid=candidate_valid,
            implementation="pallas",
            **options,
        )

    def reference(q, k, v, prefix_keys, prefix_values, prefix_valid, candidate_valid):
        full_q = jnp.concatenate([jnp.zeros_like(problem.q[:, :prefix], q.dtype), q], axis=1)
        out = candidate_attention_reference(
            full_q,
            jnp.concatenate([prefix_keys, k], axis=1),
            jnp.concatenate([prefix_values, v], axis=1),
            num_prefix=prefix,
            key_valid=jnp.concatenate([prefix_valid, candidate_valid], axis=1),
            history=problem.history,
            **options,
        )
        return out[:, prefix:]

    def output_and_gradients(attend):
        """One jitted step: the output, and the gradients of sum(out * cotangent)."""

        def step(q, k, v, prefix_keys, prefix_values, cotangent, prefix_valid, candidate_valid):
            def differentiated(*arrays):
                return attend(*arrays, prefix_valid, candidate_valid)

            out, pullback = jax.vjp(differentiated, q, k, v, prefix_keys, prefix_values)
            return out, pullback(cotangent.astype(out.dtype))

        return jax.jit(step)

    def to_numpy(outputs):
        return [np.asarray(x, np.float32) for x in jax.tree.leaves(outputs)]

    masks = (prefix_valid, candidate_valid)
    f32 = [x.astype(jnp.float32) for x in (*inputs, cotangent)]
    with jax.default_matmul_precision("highest"):
        want_out, want_grads = output_and_gradients(reference)(*f32, *masks)
    checks = []
    try:
        out, grads = output_and_gradients(ours)(*inputs, cotangent, *masks)
        pairs = (("output", out, want_out), ("gradients", grads, want_grads))
        for label, got, want in pairs:
            checks.append(_check(f"cached attention {name} {label}", to_numpy(got), to_numpy(want)))
    except Exception as failure:  # noqa: BLE001 - a failing op is a failed check
        for label in ("output", "gradients"):
            checks.append(
                {"name": f"cached attention {name} {label}", "passed": False, **_error(failure)}
            )
    return checks


# 3. Attention ----------------------------------------------------------------------------------


def _attention_row(config_name, impl_name, implementation, config, history) -> dict:
    return {
        "config": config_name,
        "impl": impl_name,
        "description": implementation.description,
        **dataclasses.asdict(config),
        "useful_gflop_fwd": config.useful_flops(history) / 1e9,
        "fwd": None,
        "fwd_bwd": None,
    }


def _print_row(row: dict) -> None:
    print(
        f"{row['config']} {row['impl']}: fwd {attention_bench.cell(row['fwd'])}, "
        f"fwd+bwd {attention_bench.cell(row['fwd_bwd'])}",
        flush=True,
    )


def _skipped(reason: str) -> dict:
    return {"status": "skipped", "detail": reason}


def _of_matmul(result: dict | None, ceilings: topk_bench.Ceilings) -> None:
    if result and result.get("status") == "ok":
        result["of_matmul"] = result["tflops"] * 1e12 / ceilings.matmul_flop_per_s


def attention_peer_rows(
    plan: Plan,
    problems: dict,
    impls: dict,
    names: tuple[str, ...],
    unavailable: dict[str, str],
    budget: Budget,
    ceilings: topk_bench.Ceilings,
) -> list[dict]:
    """Check, then time, each of `names` at every config (fwd, and fwd+bwd where it has one)."""
    rows = []
    for impl_name in names:
        implementation = impls[impl_name]
        for config_name, (problem, reference) in problems.items():
            row = _attention_row(
                config_name, impl_name, implementation, problem.config, problem.history
            )
            reason = unavailable.get(impl_name) or budget.exhausted()
            for backward, key in ((False, "fwd"), (True, "fwd_bwd")):
                if backward and not implementation.backward:
                    continue
                if reason:
                    row[key] = _skipped(reason)
                    continue
                row[key] = attention_bench.measure(
                    implementation,
                    problem,
                    reference,
                    backward,
                    iters=plan.iters,
                    warmup=plan.warmup,
                )
                _of_matmul(row[key], ceilings)
            _print_row(row)
            rows.append(row)
            if implementation.module == "torch" and not reason:
                import torch

                torch.cuda.empty_cache()
    return rows


def attention_summary(rows: list[dict]) -> list[dict]:
    """Per config and pass: ours, the best peer (by time) and ours' speed-up over it."""
    summary = []
    configs = list(dict.fromkeys(row["config"] for row in rows))
    for config in configs:
        for key in ("fwd", "fwd_bwd"):
            timed = {
                row["impl"]: row[key]["ms"]
                for row in rows
                if row["config"] == config and row[key] and row[key].get("status") == "ok"
            }
            ours = timed.pop(OURS, None)
            best = min(timed, key=timed.get) if timed else None
            summary.append(
                {
                    "config": config,
                    "pass": key,
                    "ours_ms": ours,
                    "best_peer": best,
                    "best_peer_ms": timed.get(best),
                    "speedup_vs_best_peer": (timed[best] / ours) if ours and best else None,
                }
            )
    return summary


# 4. Top-k --------------------------------------------------------------------------------------


class TopkInputs:
    """Queries and corpora shared by the rows: one corpus per size, made once."""

    def __init__(self):
        self._corpora: dict[int, jax.Array] = {}

    def get(self, batch: int, num_items: int):
        if num_items not in self._corpora:
            self._corpora.clear()  # rows come grouped by size: keep one corpus on the card
            _, corpus, _ = topk_bench.make_inputs(1, num_items, masked=False, seed=num_items)
            self._corpora[num_items] = corpus
        queries = jax.random.normal(jax.random.key(batch), (batch, shapes.TOPK_DIM), jnp.float32)
        return queries, self._corpora[num_items], None


def check_topk(rows: list[tuple[int, int, int]], inputs: TopkInputs) -> tuple[list[dict], dict]:
    checks, references = [], {}
    for batch, num_items, k in rows:
        name = f"top-k {batch} x {num_items:,}, k={k}"
        try:
            queries, corpus, mask = inputs.get(batch, num_items)
            fn, _ = topk_bench.build("pallas", k, interpret=False)
            want = topk_bench.reference_top_k(queries, corpus, k, mask)
            result = topk_bench.check_against_reference(
                fn(queries, corpus, mask), queries, corpus, k, mask, want
            )
            references[(batch, num_items, k)] = want
            checks.append({"name": name, "passed": result.pop("ok"), **result})
        except Exception as failure:  # noqa: BLE001
            checks.append({"name": name, "passed": False, **_error(failure)})
    return checks, references


def topk_rows(
    plan: Plan,
    inputs: TopkInputs,
    names: tuple[str, ...],
    skipped: dict[str, str],
    budget: Budget,
    ceilings: topk_bench.Ceilings,
    references: dict,
) -> list[dict]:
    rows = []
    for batch, num_items, k in plan.topk_rows:
        reason = budget.exhausted()
        row_skipped = {**skipped, **({name: reason for name in names} if reason else {})}
        print(f"== top-k {batch} x {num_items:,}, k={k}", flush=True)
        rows.append(
            topk_bench.run_shape(
                batch,
                num_items,
                k,
                inputs=functools.partial(inputs.get, batch, num_items),
                only=names,
                skipped=row_skipped,
                ceilings=ceilings,
                iters=plan.iters,
                warmup=plan.warmup,
                max_seconds=plan.max_seconds,
                want=references.get((batch, num_items, k)),
            )
        )
    return rows


# 5. The session --------------------------------------------------------------------------------


def peer_availability(plan: Plan, impls: dict) -> dict[str, str]:
    """Why each peer cannot run here (absent when it can)."""
    reasons = {}
    for name in ATTENTION_PEERS:
        reason = impls[name].unavailable()
        if reason:
            reasons[name] = reason
    reason = topk_bench.torch_unavailable()
    if reason:
        reasons["torch"] = reason
    if plan.interpret:  # the peers have no interpreter: a dry run never runs them
        for name in (*ATTENTION_PEERS, *TOPK_PEERS):
            reasons.setdefault(name, "dry run on the CPU")
    return reasons


def _versions() -> dict[str, str]:
    versions = {}
    for module in ("jax", "jaxlib", "equinox", "numpy", "torch", "tokamax"):
        try:
            versions[module] = importlib.import_module(module).__version__
        except Exception as failure:  # noqa: BLE001 - missing or broken: say which
            versions[module] = f"unavailable ({type(failure).__name__})"
    return versions


def _timed(checks: list[dict], started: float) -> list[dict]:
    """`checks`, each with the seconds the step that made it took (compiling included)."""
    seconds = time.perf_counter() - started
    return [{**check, "seconds": seconds} for check in checks]


def attention_section(
    plan: Plan, impls: dict, unavailable: dict, budget: Budget, ceilings, checks: list[dict]
) -> dict:
    """Check ours at every config (plain and cached), then time ours, XLA and the peers."""
    problems, runners = {}, {}
    for seed, (name, config) in enumerate(plan.attention.items()):
        problem = attention_bench.make_problem(config, "causal", pad_history=True, seed=seed)
        reference = attention_bench.Reference(problem)
        problems[name] = (problem, reference)
        started = time.perf_counter()
        config_checks, runners[name] = check_attention(name, problem, reference, impls[OURS])
        checks += _timed(config_checks, started)
        started = time.perf_counter()
        checks += _timed(check_cached_attention(name, problem), started)
        for check in checks[-4:]:
            print(
                f"check {check['name']}: {check.get('rel_error')} {check['passed']} "
                f"({check['seconds']:.1f} s)",
                flush=True,
            )
    rows = []
    for name, (problem, _) in problems.items():
        row = _attention_row(name, OURS, impls[OURS], problem.config, problem.history)
        for backward, key in ((False, "fwd"), (True, "fwd_bwd")):
            if backward not in runners[name]:
                row[key] = {"status": "check failed", "detail": "see checks"}
                continue
            runner, checked = runners[name][backward]
            row[key] = attention_bench.time_pass(
                runner, problem, backward, checked, iters=plan.iters, warmup=plan.warmup
            )
            _of_matmul(row[key], ceilings)
        _print_row(row)
        rows.append(row)
    runners.clear()
    names = (ATTENTION_BASELINE, *ATTENTION_PEERS)
    rows += attention_peer_rows(plan, problems, impls, names, unavailable, budget, ceilings)
    return {"rows": rows, "summary": attention_summary(rows)}


def topk_section(
    plan: Plan, unavailable: dict, budget: Budget, ceilings, checks: list[dict]
) -> list[dict]:
    """Check ours at every row, then time ours, `"auto"`, XLA and torch."""
    inputs = TopkInputs()
    started = time.perf_counter()
    topk_checks, references = check_topk(plan.topk_rows, inputs)
    checks += _timed(topk_checks, started)
    names = (*TOPK_OURS, *TOPK_PEERS)
    return topk_rows(plan, inputs, names, unavailable, budget, ceilings, references)


def e2e_section(plan: Plan, budget: Budget, ceilings, checks: list[dict]) -> dict:
    """The whole model, each path checked against an independent one before it is timed."""
    reason = budget.exhausted()
    if reason:
        return {"skipped": reason}
    try:
        e2e = e2e_bench.run(
            plan.e2e,
            iters=plan.iters,
            warmup=plan.warmup,
            candidate_chunk=plan.e2e.candidates,
            seed=0,
            ceilings=ceilings,
            max_seconds=plan.max_seconds,
        )
    except Exception as failure:  # noqa: BLE001 - keep the rest of the session
        e2e = _error(failure)
    for row in e2e.get("rows", []):
        check = {"name": f"end to end {row['job']}", "passed": bool(row["agree"])}
        checks.append({**check, **{k: v for k, v in row.items() if "diff" in k or "overlap" in k}})
    if "rows" not in e2e:
        checks.append({"name": "end to end", "passed": False, **e2e})
    return e2e


def run_session(plan: Plan, json_path: Path, command: str) -> dict:
    budget = Budget(plan.budget_s)
    payload: dict = {
        "session": "benchmarks.gpu_session",
        "mode": plan.mode,
        "command": command,
        **run_metadata(),
        "hopper": is_hopper_gpu(),
        "kernels_interpreted": plan.interpret,
        "versions": _versions(),
        "plan": {
            "sections": list(plan.sections),
            "attention_configs": list(plan.attention),
            "topk_rows": [list(row) for row in plan.topk_rows],
            "e2e_shapes": dataclasses.asdict(plan.e2e),
            "iters": plan.iters,
            "warmup": plan.warmup,
            "budget_s": plan.budget_s,
            "history": "causal",
            "pad_history": True,
            "dtype": "bfloat16",
            "logit_cap": LOGIT_CAP,
            "tolerance": TOLERANCE,
        },
        "timing_method": (
            "device time per call over back-to-back calls: CUPTI kernel sum (JAX on a GPU), "
            "CUDA events (torch), else host clock around the calls with one wait"
        ),
    }

    def save(section: str) -> None:
        payload["elapsed_s"] = budget.elapsed()
        payload.setdefault("sections_done", []).append(section)
        write_json(json_path, payload)
        cpu = time.process_time()
        print(f"[{budget.elapsed():6.1f} s, cpu {cpu:6.1f} s] {section} done", flush=True)

    impls = attention_bench.implementations(interpret=False)
    unavailable = peer_availability(plan, impls)
    payload["skipped_peers"] = unavailable
    for name, reason in unavailable.items():
        print(f"skip {name}: {reason}", flush=True)

    ceilings, payload["ceilings"] = measure_ceilings(plan)
    save("ceilings")
    checks = payload["checks"] = []
    # Each section checks its own shapes, then times ours, the baselines and the peers, so that
    # a section the budget reaches is complete, peers included.
    if "attention" in plan.sections:
        payload["attention"] = attention_section(plan, impls, unavailable, budget, ceilings, checks)
        payload["checks_passed"] = all(check["passed"] for check in checks)
        save("attention")
    if "topk" in plan.sections:
        payload["topk"] = {"rows": topk_section(plan, unavailable, budget, ceilings, checks)}
        payload["checks_passed"] = all(check["passed"] for check in checks)
        save("top-k")
    if "e2e" in plan.sections:
        payload["e2e"] = e2e_section(plan, budget, ceilings, checks)
        payload["checks_passed"] = all(check["passed"] for check in checks)
        save("end to end")
    return payload


# 6. Tables -------------------------------------------------------------------------------------


def _attention_cell(result: dict | None) -> str:
    if not result:
        return "-"
    if result.get("status") != "ok":
        return result["status"]
    return f"{result['ms']:.3g} ({result['tflops']:.3g}, {result.get('of_matmul', 0):.3f})"


def format_tables(payload: dict) -> str:
    lines = [f"{payload['device']}, {payload['date']}, mode {payload['mode']}"]
    ceilings = payload["ceilings"]
    lines.append(
        f"ceilings: copy {ceilings['copy_bytes_per_s'] / 1e12:.3g} TB/s (read + write), "
        f"bf16 matmul {ceilings['matmul_flop_per_s'] / 1e12:.4g} TFLOP/s "
        f"({ceilings['copy']['timing']['method']})"
    )
    failed = [check for check in payload["checks"] if not check["passed"]]
    lines.append(
        f"checks: {len(payload['checks']) - len(failed)} of {len(payload['checks'])} passed"
        + "".join(
            f"\n  FAILED {c['name']}: {c.get('detail') or c.get('rel_error')}" for c in failed
        )
    )

    if "attention" in payload:
        lines += ["", "attention: ms (useful TFLOP/s, fraction of the matmul rate)"]
        header = f"{'config':<12}{'impl':<16}{'fwd':>28}{'fwd+bwd':>28}"
        lines += [header, "-" * len(header)]

        for row in payload["attention"]["rows"]:
            fwd, fwd_bwd = _attention_cell(row["fwd"]), _attention_cell(row["fwd_bwd"])
            lines.append(f"{row['config']:<12}{row['impl']:<16}{fwd:>28}{fwd_bwd:>28}")
        for item in payload["attention"].get("summary", []):
            if item["speedup_vs_best_peer"] is not None:
                lines.append(
                    f"  {item['config']} {item['pass']}: ours {item['speedup_vs_best_peer']:.2f}x "
                    f"the best peer ({item['best_peer']})"
                )
        notes = [
            f"  {row['config']} {row['impl']} {key}: {row[key].get('detail', '')}"
            for row in payload["attention"]["rows"]
            for key in ("fwd", "fwd_bwd")
            if row[key] and row[key].get("status") not in ("ok", "skipped")
        ]
        if notes:
            lines += ["not timed:", *notes]

    if "topk" in payload:
        names = list(dict.fromkeys(n for row in payload["topk"]["rows"] for n in row["impls"]))
        lines += ["", "top-k: ms (multiple of the floor); floor from the measured ceilings"]
        lines.append(topk_bench.format_table(payload["topk"]["rows"], names))

    if "e2e" in payload:
        e2e = payload["e2e"]
        lines.append("")
        if "rows" in e2e:
            lines.append(e2e_bench.format_table(e2e))
        else:
            lines.append(f"end to end: {e2e.get('skipped') or e2e.get('detail')}")
    if payload["skipped_peers"]:
        lines.append("")
        lines += [f"skipped {name}: {reason}" for name, reason in payload["skipped_peers"].items()]
    lines.append(f"\n{payload['elapsed_s']:.0f} s; checks passed: {payload['checks_passed']}")
    return "\n".join(lines)


def _throwaway_compilation_cache() -> None:
    """For a dry run: a persistent compilation cache in a temporary folder, unless one is set.

    The interpreter compiles each kernel's body as an XLA module of its own, again for every
    jitted function that calls the kernel (the check, the gradient, the model); with the cache
    each is compiled once per run, which saves a sixth of the dry run's CPU time. Takes effect
    only before the process's first compilation (a fresh `python -m`)."""
    if jax.config.values["jax_compilation_cache_dir"]:
        return
    folder = tempfile.mkdtemp(prefix="phoenix_eqx_dry_run_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="GPU: 2 attention configs, 3 top-k rows, 5 calls"
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU: tiny shapes, kernels in the Mosaic GPU interpreter, one call each",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for timed items")
    parser.add_argument("--iters", type=int, default=None, help="calls timed back to back")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, in this order: {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench_results/gpu_session.json"))
    args = parser.parse_args(argv)
    # JAX would otherwise take 75% of the card up front and leave the torch peers too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    mode_name = "dry-run" if args.dry_run else "quick" if args.quick else "full"
    try:
        plan = make_plan(mode_name, args.budget_s, args.iters, tuple(args.sections.split(",")))
    except ValueError as error:
        parser.error(str(error))
    if plan.interpret:
        _throwaway_compilation_cache()
    if not plan.interpret and not is_hopper_gpu():
        parser.error(f"needs a Hopper GPU (JAX runs on {jax.devices()[0]}); use --dry-run")
    arguments = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.gpu_session", *arguments])
    with kernel_mode(plan.interpret):
        payload = run_session(plan, args.json, command)
    print()
    print(format_tables(payload))
    print(f"json: {args.json}")
    return 0 if payload["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
