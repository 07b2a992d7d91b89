"""Check the Mosaic GPU kernel variants against the reference at the benchmark shapes; time them.

`python -m benchmarks.attention_gpu_check [--configs ...] [--variants ...] [--history ...]`

Needs a Hopper GPU. The shapes are the attention benchmark's (`benchmarks.shapes`). Every
variant runs on fresh random bf16 inputs with random history padding and is compared with the
f32 reference (relative L2 error of the output, and of dq, dk, dv); timings come from
`benchmarks.timing.device_time`: CUPTI kernel times (median over back-to-back calls of the
summed kernels of one step, with the per-kernel split), beside the span of those calls ("span":
kernels plus the gaps between them, per call).
"""

import argparse
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from phoenix_eqx.kernels.candidate_attention.mosaic_gpu import candidate_attention_pallas
from phoenix_eqx.kernels.candidate_attention.reference import candidate_attention_reference

from benchmarks.attention import FWD_BWD_FLOP_FACTOR, LOGIT_CAP
from benchmarks.shapes import ATTENTION_CONFIGS, AttentionConfig
from benchmarks.timing import device_time

# name: kernel options, and whether to run the backward (which does not use block_kv).
VARIANTS = {
    "regs-kv128": (dict(register_operands=True, block_kv=128), True),
    "regs-kv64": (dict(register_operands=True, block_kv=64), False),
    "staged-kv64": (dict(register_operands=False, block_kv=64), True),
}


def make_inputs(config: AttentionConfig, seed: int):
    """bf16 q, k, v, the output's cotangent and `key_valid`, [batch, seq, heads, dim]."""
    batch, seq_len, head_dim = config.batch, config.seq_len, config.head_dim
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (batch, seq_len, config.q_heads, head_dim), jnp.bfloat16)
    k = jax.random.normal(keys[1], (batch, seq_len, config.kv_heads, head_dim), jnp.bfloat16)
    v = jax.random.normal(keys[2], (batch, seq_len, config.kv_heads, head_dim), jnp.bfloat16)
    d_out = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    # Each row keeps a random part of its history; row 0 keeps all of it.
    kept = jax.random.randint(keys[4], (batch, 1), 0, config.prefix).at[0].set(config.prefix)
    position = jnp.arange(seq_len)[None]
    key_valid = (position <= kept) | (position >= config.prefix)
    return q, k, v, d_out, key_valid


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def loss(attend, q, k, v, d_out):
    return jnp.sum(attend(q, k, v).astype(jnp.float32) * d_out.astype(jnp.float32))


def kernel_attend(options, kernel_options):
    def attend(q, k, v):
        return candidate_attention_pallas(q, k, v, interpret=False, **options, **kernel_options)

    return attend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", choices=list(ATTENTION_CONFIGS), default=list(ATTENTION_CONFIGS)
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--history", choices=["causal", "bidirectional"], default="causal")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-bwd", action="store_true")
    args = parser.parse_args(argv)
    print(jax.devices()[0].device_kind, "jax", jax.__version__, "history", args.history)

    table = []
    for seed, name in enumerate(args.configs):
        config = ATTENTION_CONFIGS[name]
        q, k, v, d_out, key_valid = make_inputs(config, seed)
        options = dict(
            num_prefix=config.prefix,
            key_valid=key_valid,
            history=args.history,
            scale=1 / math.sqrt(config.head_dim),
            logit_cap=LOGIT_CAP,
            cap_method="tanh",
        )

        reference = functools.partial(candidate_attention_reference, **options)
        f32 = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
        with jax.default_matmul_precision("highest"):
            ref_out = jax.jit(reference)(*f32[:3])
            ref_grads = jax.jit(jax.grad(functools.partial(loss, reference), argnums=(0, 1, 2)))(
                *f32
            )
        flops = config.useful_flops(args.history)

        for variant in args.variants:
            kernel_options, backward = VARIANTS[variant]
            attend = kernel_attend(options, kernel_options)
            row = {"config": name, "variant": variant}
            try:
                fwd = jax.jit(attend)
                out = fwd(q, k, v)
                row["fwd err"] = relative_error(out, ref_out)
                row["fwd unwritten"] = int(jnp.sum(~jnp.isfinite(out)))
                timing = device_time(fwd, q, k, v, iters=args.iters)
                row["fwd ms"], row["fwd span"] = timing.ms, timing.span_ms
                row["fwd TF/s"] = flops / row["fwd ms"] / 1e9
                print(name, variant, "fwd", timing.method, timing.kernels, flush=True)
                if backward and not args.no_bwd:
                    step = jax.jit(jax.grad(functools.partial(loss, attend), argnums=(0, 1, 2)))
                    grads = step(q, k, v, d_out)
                    row["bwd err"] = max(map(relative_error, grads, ref_grads))
                    timing = device_time(step, q, k, v, d_out, iters=args.iters)
                    row["fwd+bwd ms"], row["fwd+bwd span"] = timing.ms, timing.span_ms
                    row["fwd+bwd TF/s"] = FWD_BWD_FLOP_FACTOR * flops / row["fwd+bwd ms"] / 1e9
                    print(name, variant, "fwd+bwd", timing.method, timing.kernels, flush=True)
            except Exception as failure:  # report the variant and go on with the others
                row["error"] = f"{type(failure).__name__}: {str(failure)[:300]}"
            print(row, flush=True)
            table.append(row)

    columns = [
        "fwd err",
        "fwd ms",
        "fwd span",
        "fwd TF/s",
        "bwd err",
        "fwd+bwd ms",
        "fwd+bwd span",
        "fwd+bwd TF/s",
    ]
    print(f"\n{'config':<12}{'variant':<17}" + "".join(f"{c:>14}" for c in columns))
    for row in table:
        cells = "".join(f"{row[c]:>14.3g}" if c in row else f"{'-':>14}" for c in columns)
        print(f"{row['config']:<12}{row['variant']:<17}{cells}  {row.get('error', '')}")


if __name__ == "__main__":
    main()
