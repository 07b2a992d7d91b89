"""The one dispatch rule every kernel op follows (`kernels.dispatch.use_pallas`)."""

import pytest
from phoenix_eqx.kernels import dispatch


@pytest.fixture
def on_hopper(monkeypatch):
    monkeypatch.setattr(dispatch, "is_hopper_gpu", lambda: True)


def test_auto_takes_the_kernel_on_hopper_unless_unsupported_or_measured_slower(on_hopper):
    assert dispatch.use_pallas("auto", False, None, "op")
    assert not dispatch.use_pallas("auto", False, "q: expected bf16", "op")
    assert not dispatch.use_pallas("auto", False, None, "op", measured_slower=True)


def test_auto_takes_the_reference_off_hopper():
    assert not dispatch.use_pallas("auto", False, None, "op")


def test_pallas_reports_why_it_cannot_run():
    with pytest.raises(NotImplementedError, match=r"op \(Pallas kernel\): q: expected bf16"):
        dispatch.use_pallas("pallas", False, "q: expected bf16", "op")
    assert dispatch.use_pallas("pallas", False, None, "op", measured_slower=True)


def test_rejects_unknown_implementation_and_interpreting_xla():
    # Runtime type checking (on in the suite) may refuse the literal first, with a TypeError.
    with pytest.raises((ValueError, TypeError), match="implementation"):
        dispatch.use_pallas("triton", False, None, "op")
    with pytest.raises(ValueError, match="interpret=True"):
        dispatch.use_pallas("xla", True, None, "op")


def test_top_k_auto_keeps_xla_for_one_query_and_large_k(on_hopper, monkeypatch):
    import jax.numpy as jnp
    from phoenix_eqx.kernels.corpus_top_k import api

    chosen = []
    reference = api.corpus_top_k_reference

    def spy(*args):
        chosen.append("xla")
        return reference(*args)

    monkeypatch.setattr(api, "corpus_top_k_reference", spy)
    corpus = jnp.zeros((2000, 64), jnp.bfloat16)
    api.corpus_top_k(jnp.zeros((1, 64)), corpus, 1000)
    assert chosen == ["xla"]
