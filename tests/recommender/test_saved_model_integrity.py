"""What is on disk is what loads, or a ValueError naming the file: a saved `Recommender` and an
Orbax training checkpoint under flipped bytes, truncation, files that do not belong together,
and an interrupted save (which must leave the previous save loadable and equal)."""

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phoenix_eqx as px
from phoenix_eqx.recommender import persistence
from phoenix_eqx.recommender.models import build_models
from phoenix_eqx.training import CheckpointManager, export_model, init_optimizer
from phoenix_eqx.training import checkpoint as checkpoint_module
from phoenix_eqx.training.checkpoint import load_exported_model

from ..helpers import TINY_FIT_OPTIONS, library_checks_only, tiny_ranker_config

FILES = (*persistence.DATA_FILES, persistence.MANIFEST)
# The ranker is saved and checked whether trained or not; training it too would triple the
# module's fit time on two CPU cores.
OPTIONS = dataclasses.replace(TINY_FIT_OPTIONS, ranker_epochs=0)
USERS = ["user-1", "user-7", "someone-new"]


@pytest.fixture(scope="module")
def rec() -> px.Recommender:
    """A tiny fit on 60 users' 6 interactions each with 8 items, string ids."""
    rng = np.random.default_rng(0)
    users = np.repeat([f"user-{u}" for u in range(60)], 6)
    items = np.array([f"item-{i}" for i in rng.integers(0, 8, users.size)])
    times = np.tile(np.arange(6.0), 60)
    return px.Recommender.fit(users, items, times, options=OPTIONS)


@pytest.fixture(scope="module")
def saved(rec, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("saved") / "model"
    rec.save(directory)
    return directory


def _copy(saved: Path, parent: Path) -> Path:
    return Path(shutil.copytree(saved, parent / "model"))


def _flip(file: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= mask
    file.write_bytes(bytes(data))


def _rewrite_manifest(directory: Path) -> None:
    """What a user who edits a file and then recomputes the checksums does."""
    persistence._write_manifest(
        directory,
        {
            name: persistence._entry((directory / name).read_bytes())
            for name in persistence.DATA_FILES
        },
    )


def _recommendations(rec: px.Recommender) -> tuple:
    histories = [["item-1", "item-2"], ["item-3"], ["item-0", "item-5", "item-7"]]
    return rec.recommend(USERS, histories, k=4)


def _assert_same_recommender(expected: px.Recommender, loaded: px.Recommender) -> None:
    models = [(m.retriever, m.ranker) for m in (expected, loaded)]
    for want, got in zip(*(jax.tree.leaves(m) for m in models), strict=True):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
    for want, got in zip(_recommendations(expected), _recommendations(loaded), strict=True):
        np.testing.assert_array_equal(want, got)
    assert loaded.options == expected.options and loaded.item_ids == expected.item_ids
    assert loaded.validation == expected.validation
    for user, actions in expected.history_actions.items():
        np.testing.assert_array_equal(loaded.history_actions[user], actions)


def test_a_save_overwrites_a_previous_one_in_place(rec, tmp_path, monkeypatch):
    directory = tmp_path / "nested" / "model"
    rec.save(directory)
    rec.save(directory)  # replaces the save with an atomic exchange on Linux
    assert sorted(path.name for path in directory.iterdir()) == sorted(FILES)
    assert list(directory.parent.iterdir()) == [directory]  # no temporary directory left
    _assert_same_recommender(rec, px.Recommender.load(directory))
    # Without the exchange (another system or file system): two renames, same result.
    monkeypatch.setattr(persistence, "_exchange", lambda first, second: False)
    rec.save(directory)
    assert list(directory.parent.iterdir()) == [directory]
    loaded = persistence.load(directory)
    assert loaded.item_ids == rec.item_ids and loaded.options == rec.options


@settings(deadline=None)
@given(
    name=st.sampled_from(FILES),
    position=st.floats(0.0, 1.0, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_flipped_byte_is_detected_and_the_file_named(saved, name, position, mask):
    with tempfile.TemporaryDirectory() as parent:
        directory = _copy(saved, Path(parent))
        file = directory / name
        _flip(file, int(position * file.stat().st_size), mask)
        with pytest.raises(ValueError, match=f"^{name}: checksum mismatch, the file is damaged"):
            persistence.load(directory)


def test_every_byte_of_the_manifest_is_covered(saved, tmp_path):
    """The manifest checks itself: a changed checksum, size or name, and even whitespace that
    parses to the same JSON, is damage (every byte: it is a few hundred)."""
    directory = _copy(saved, tmp_path)
    original = (directory / persistence.MANIFEST).read_bytes()
    whitespace = {ord(" "): ord("\n"), ord("\n"): ord(" ")}
    for offset, byte in enumerate(original):
        damaged = bytearray(original)
        damaged[offset] = whitespace.get(byte, byte ^ 0x01)
        (directory / persistence.MANIFEST).write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="^manifest.json: checksum mismatch"):
            persistence.load(directory)


def test_an_interrupted_save_leaves_the_previous_save(rec, saved, tmp_path, monkeypatch):
    directory = _copy(saved, tmp_path)
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    other = persistence.Saved(
        retriever=rec.retriever,
        ranker=rec.ranker,
        options=dataclasses.replace(rec.options, seed=1),
        item_ids=rec.item_ids,
        histories=rec.histories,
        history_actions=rec.history_actions,
        use_ranker=not rec.use_ranker,
        validation={},
        validation_history=[],
        features=rec.features,
    )

    def disk_full(directory: Path, entries: dict) -> None:
        raise OSError(28, "No space left on device")

    # The manifest is the last write of a save.
    monkeypatch.setattr(persistence, "_write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        persistence.save(other, directory)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before
    assert list(tmp_path.iterdir()) == [directory]  # the partial save was removed
    _assert_same_recommender(rec, px.Recommender.load(directory))

    # Without the exchange, a failure between the two renames puts the previous save back.
    real_rename = persistence.os.rename

    def failing_rename(source, target) -> None:
        if ".saving-" in str(source):
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(persistence, "_exchange", lambda first, second: False)
    monkeypatch.setattr(persistence.os, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output error"):
        persistence.save(other, directory)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before
    assert list(tmp_path.iterdir()) == [directory]

    # What a killed save leaves is never loaded: every file but the manifest, written last.
    (directory / persistence.MANIFEST).unlink()
    with pytest.raises(ValueError, match=r"missing \['manifest.json'\].*incomplete"):
        persistence.load(directory)


def test_save_keeps_away_from_a_directory_holding_other_files(rec, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"directory: expected an empty directory .*notes.txt"):
        rec.save(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _edit_json(directory: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((directory / "recommender.json").read_text())
    edit(meta)
    (directory / "recommender.json").write_text(json.dumps(meta))


def _models_of(options: px.FitOptions) -> Callable[[Path], None]:
    """Replace models.eqx by the (zero) models of `options`: another save's models."""

    def write(directory: Path) -> None:
        features = persistence.load(directory, verify=False).features
        shapes = eqx.filter_eval_shape(build_models, options, features, key=jax.random.key(0))
        zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
        eqx.tree_serialise_leaves(directory / "models.eqx", zeros)

    return write


def _set_option(name: str, value: int) -> Callable[[Path], None]:
    return lambda directory: _edit_json(
        directory, lambda meta: meta["options"].__setitem__(name, value)
    )


def _rewrite_npz(name: str, **changes: Callable[[np.ndarray], np.ndarray]):
    def write(directory: Path) -> None:
        with np.load(directory / name) as stored:
            arrays = {key: changes.get(key, lambda a: a)(stored[key]) for key in stored.files}
        np.savez(directory / name, **arrays)

    return write


# Every file is read whole into memory and closed: none is left to warn when collected.
@pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("models.eqx", lambda d: _truncate(d / "models.eqx"), r"models.eqx: truncated or damaged"),
        ("histories.npz", lambda d: _truncate(d / "histories.npz"), r"histories.npz: unreadable"),
        ("features.npz", lambda d: _truncate(d / "features.npz"), r"features.npz: unreadable"),
        (
            "models.eqx",
            _models_of(dataclasses.replace(OPTIONS, emb_size=16)),
            r"models.eqx: saved with other options .* emb_size=16 fits its arrays, "
            r"recommender.json has emb_size=8",
        ),
        (
            "models.eqx",
            _models_of(dataclasses.replace(OPTIONS, num_layers=2)),
            r"models.eqx: .* num_layers=2 fits its arrays, recommender.json has num_layers=1",
        ),
        (
            "recommender.json",
            _set_option("key_size", 8),
            r"models.eqx: .* key_size=4 fits its arrays, recommender.json has key_size=8",
        ),
        (
            "recommender.json",
            lambda d: _edit_json(d, lambda meta: meta["item_ids"].pop()),
            r"recommender.json: item_ids: expected 8 ids .*, got 7",
        ),
        (
            "recommender.json",
            lambda d: _edit_json(d, lambda meta: meta["user_ids"].__setitem__(1, "user-0")),
            r"recommender.json: user_ids: expected distinct ids",
        ),
        (
            "histories.npz",
            _rewrite_npz("histories.npz", items=lambda items: items + 5),
            r"histories.npz: items: expected item rows in 1..8",
        ),
        (
            "histories.npz",
            _rewrite_npz("histories.npz", actions=lambda masks: masks + (1 << len(px.ACTIONS))),
            r"histories.npz: actions: expected action masks in 0\.\.524287",
        ),
        (
            "histories.npz",
            _rewrite_npz("histories.npz", actions=lambda masks: masks[:-1]),
            r"histories.npz: actions: expected shape \(360,\) \(one per item\)",
        ),
        (
            "features.npz",
            _rewrite_npz("features.npz", user_hashes=lambda rows: rows[:-1]),
            r"features.npz: user_hashes: expected shape \(60, 1\)",
        ),
    ],
    ids=[
        "models truncated",
        "histories truncated",
        "features truncated",
        "models of another emb_size",
        "models of another num_layers",
        "option edited",
        "item_ids edited",
        "user_ids edited",
        "history items out of range",
        "history actions out of range",
        "history actions cut",
        "user hashes cut",
    ],
)
def test_damage_is_named_with_and_without_matching_checksums(
    saved, tmp_path, file, damage, message
):
    directory = _copy(saved, tmp_path)
    damage(directory)
    with pytest.raises(ValueError, match=f"^{file}: (checksum|size) mismatch, the file is damaged"):
        persistence.load(directory)
    # Whoever rewrote the manifest too gets the reason, before any model is built.
    _rewrite_manifest(directory)
    with pytest.raises(ValueError, match=message):
        persistence.load(directory)


def test_verify_false_skips_only_the_checksums_and_reads_format_2(rec, saved, tmp_path):
    directory = _copy(saved, tmp_path)
    _truncate(directory / "features.npz")
    with pytest.raises(ValueError, match="^features.npz: size mismatch"):
        px.Recommender.load(directory, verify=False)
    shutil.copy(saved / "features.npz", directory / "features.npz")
    # A save from before checksums: format 2, no manifest.
    (directory / persistence.MANIFEST).unlink()
    _edit_json(directory, lambda meta: meta.__setitem__("format_version", 2))
    # Nor action masks: each item engaged, as it is in this implicit-feedback log.
    with np.load(directory / "histories.npz") as stored:
        arrays = {key: stored[key] for key in ("lengths", "items")}
    np.savez(directory / "histories.npz", **arrays)
    with pytest.raises(ValueError, match=r"missing \['manifest.json'\].*verify=False"):
        px.Recommender.load(directory)
    _assert_same_recommender(rec, px.Recommender.load(directory, verify=False))
    with library_checks_only(), pytest.raises(ValueError, match="verify: expected True or False"):
        px.Recommender.load(directory, verify="no")


# Orbax training checkpoints: a SHA-256 of every array, kept in the metadata item.

OPTIMIZER = optax.adam(1e-2)
# Orbax's reads still in flight when one fails finish on a closed event loop, reported when
# collected, possibly during the next test.
ORBAX_READS_AFTER_A_FAILURE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


def _training_state(seed: int = 0) -> tuple:
    """A tiny ranker and its Adam state, random arrays (no initialiser to compile)."""
    model = eqx.filter_eval_shape(px.PhoenixModel, tiny_ranker_config(), key=jax.random.key(0))
    template = (model, eqx.filter_eval_shape(init_optimizer, OPTIMIZER, model))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: (
            jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)
            if jnp.issubdtype(leaf.dtype, jnp.floating)
            else jnp.asarray(rng.integers(0, 1000, leaf.shape), leaf.dtype)
        ),
        template,
    )


STATE = _training_state()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint") / "ranker"
    with CheckpointManager(directory, async_save=True) as checkpoints:
        checkpoints.save(1, *STATE, data_position={"next_step": 1})
    return directory


def _restore(directory: Path):
    with CheckpointManager(directory) as checkpoints:
        return checkpoints.restore(*STATE)


def _array_files(directory: Path) -> list[Path]:
    """The step's array data files, largest first (each process's and the merged index)."""
    files = [path for path in (directory / "1" / "state").rglob("d/*") if path.is_file()]
    return sorted(files, key=lambda path: -path.stat().st_size)


@ORBAX_READS_AFTER_A_FAILURE
def test_a_changed_byte_in_a_checkpoint_array_is_found(checkpoint, tmp_path):
    restored = _restore(checkpoint)
    for want, got in zip(
        jax.tree.leaves(STATE), jax.tree.leaves((restored.model, restored.opt_state)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
    directory = Path(shutil.copytree(checkpoint, tmp_path / "ranker"))
    # Asynchronous saves split the arrays over a varying number of data files, and a file may
    # hold blocks that are never read: one changed byte in each large file is sure to hit data.
    for file in _array_files(directory):
        if file.stat().st_size > 4096:
            _flip(file, file.stat().st_size // 2)
    # Mostly tensorstore decodes the changed (zstd) blocks without complaint and the SHA-256
    # finds them; where the byte lands in a block's header, zstd itself refuses to decode.
    with pytest.raises(
        ValueError, match=r"step 1 is damaged(: array \[.*checksum mismatch| \(files missing)"
    ):
        _restore(directory)


@ORBAX_READS_AFTER_A_FAILURE
@settings(deadline=None)
@given(index=st.integers(0, 2**16), position=st.floats(0.0, 1.0, exclude_max=True))
def test_a_changed_checkpoint_byte_is_damage_or_never_read(checkpoint, index, position):
    """Some bytes are never read (e.g. each process's own index, superseded by the merged
    one): those restore bit for bit. Every other changed byte is a ValueError."""
    with tempfile.TemporaryDirectory() as parent:
        directory = Path(shutil.copytree(checkpoint, Path(parent) / "ranker"))
        files = _array_files(directory)
        file = files[index % len(files)]
        _flip(file, int(position * file.stat().st_size))
        try:
            restored = _restore(directory)
        except ValueError as error:
            assert f"{directory} step 1 is damaged" in str(error)
        else:
            for want, got in zip(
                jax.tree.leaves(STATE),
                jax.tree.leaves((restored.model, restored.opt_state)),
                strict=True,
            ):
                np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def _edit_metadata(directory: Path, edit: Callable[[dict], None]) -> None:
    file = directory / "1" / "metadata" / "metadata"
    metadata = json.loads(file.read_text())
    edit(metadata)
    file.write_text(json.dumps(metadata))


@ORBAX_READS_AFTER_A_FAILURE
def test_checkpoint_metadata_is_checksummed_and_older_checkpoints_still_restore(
    checkpoint, tmp_path
):
    directory = Path(shutil.copytree(checkpoint, tmp_path / "ranker"))
    _edit_metadata(directory, lambda metadata: metadata.__setitem__("data_position", 2))
    with pytest.raises(ValueError, match="step 1 is damaged: the metadata's checksum mismatches"):
        _restore(directory)

    def unchecked(metadata: dict) -> None:
        """Format 3, saved before the checksums: restored unverified."""
        for key in ("checksums", "sha256"):
            del metadata[key]
        metadata.update(format=checkpoint_module.UNCHECKED_FORMAT, data_position=7)

    _edit_metadata(directory, unchecked)
    assert _restore(directory).data_position == 7


@ORBAX_READS_AFTER_A_FAILURE
def test_a_changed_byte_in_an_export_is_found(tmp_path):
    model = STATE[0]
    directory = export_model(tmp_path / "served", model)
    files = sorted(
        (path for path in directory.rglob("d/*") if path.is_file()),
        key=lambda path: -path.stat().st_size,
    )
    _flip(files[0], files[0].stat().st_size // 2)
    with pytest.raises(ValueError, match=r"exported model .* is damaged"):
        load_exported_model(directory, model)
