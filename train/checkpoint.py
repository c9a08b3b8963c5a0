"""Orbax checkpoints of the whole run: train state + data-iterator position, saved together.

Every step is written by orbax (temporary directory, then an atomic rename) and then sealed with
``archlab_checksums.json``: the SHA-256 and size of each file in the step. ``restore_latest``
walks back from the newest step past any step that is truncated, fails its checksums, holds a
non-finite value or a malformed data position, says so, and, once an older step restored, moves
the unreadable ones aside (``<step>.unreadable``) rather than deleting them; if no step is intact
it raises, touching nothing, instead of starting over. An intact step saved with other shapes than
the config asks for is a config change, not damage: ``CheckpointConfigError``, touching nothing. Readers (``read_only=True``: sample, export,
distillation, transfer) do the same walk but never write or rename anything; a step the live
trainer retires (``keep``: renamed into ``.deleting``, then removed) under a reader is not damage,
and the reader lists again. Restoring takes the
target's shardings, so a checkpoint written on one mesh loads onto another.

A state with a non-finite leaf is never written (``NonFiniteStateError``), and a failed write
(disk full, file-size limit, permissions) surfaces as one ``CheckpointWriteError`` line with the
earlier steps untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from archlab.train.atomic_write import write_json_atomically
from archlab.train.errors import CheckpointConfigError, CheckpointError, CheckpointWriteError, NonFiniteStateError
from archlab.train.state import TrainState
from archlab.train.tree_paths import param_path_name, shapes_by_name

CHECKSUMS = "archlab_checksums.json"
_DELETING = ".deleting"  # old steps (beyond ``keep``) are renamed here, then removed
_LISTING_ATTEMPTS = 5  # a read-only listing retried while a live trainer deletes old steps
_RELISTINGS = 20  # how often a reader starts its walk again after the trainer retired the step it was reading


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with items ``state`` and ``data``.

    ``read_only``: open existing steps only; nothing is created, cleaned, renamed or written.
    Otherwise orphaned orbax temporary directories (a save killed mid-write) are removed at start.
    """

    def __init__(self, directory: str, *, keep: int, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        self._unsealed: list[int] = []  # saved steps whose checksums are not written yet
        # A failed background write is re-raised by ``wait`` as one CheckpointWriteError line; the
        # tracebacks orbax logs from its threads on the way would bury it.
        self._log_filter = _OrbaxErrorLogFilter()
        logging.getLogger("absl").addFilter(self._log_filter)
        _ignore_late_tensorstore_callbacks()
        with _quiet_absl():  # read_only options log their own adjustments as warnings
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=True,
                cleanup_tmp_directories=not read_only and jax.process_index() == 0,
                # An old step leaves in one rename, then is deleted out of the step listing: a reader
                # (sample, export) never sees a half-deleted step as damage or as another config's.
                todelete_subdir=None if read_only else _DELETING,
            )
        if not read_only:
            self._purge_deleted_steps()
        self._manager = self._listed(lambda: ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data")))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        """Starts an async save; ``wait`` (or the next save) makes it durable and seals it.

        Raises NonFiniteStateError (nothing written) if any leaf of ``state`` is NaN/inf, and
        CheckpointWriteError when this or the previous save could not be written.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        bad = first_nonfinite_leaf(state)
        if bad is not None:
            raise NonFiniteStateError(f"{bad} holds NaN/inf at step {step}; no checkpoint of it was written")
        self.wait()
        with self._write_errors(step):
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(_saved_form(state)), data=ocp.args.JsonSave(data_state)),
                force=True,
            )
        self._unsealed.append(step)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_saved_form(abstract_state)), data=ocp.args.JsonRestore()),
        )
        return type(abstract_state)(**restored["state"]), dict(restored["data"])

    def restore_latest(self, abstract_state: TrainState, notify=print, check_data=None) -> tuple[TrainState, dict, int] | None:
        """Newest intact (state, data_state, step), or None when there is no checkpoint at all.

        ``check_data(data_state, step) -> problem | None`` rejects a malformed saved data position
        the way a damaged array is rejected.
        """
        steps = self.all_steps()
        if not steps:
            return None
        unreadable, mismatches, tried, relistings = [], [], [], 0
        pending = list(reversed(steps))
        while pending:
            step = pending.pop(0)
            tried.append(step)
            mismatch = self._incompatibility(step, abstract_state)
            if self._retired(step) and relistings < _RELISTINGS:
                # The live trainer retired it (``checkpoint.keep``) since the listing: not damage.
                # It saved a newer step first, so list again and walk from the newest untried one.
                relistings += 1
                pending = self._untried_newest_first(tried)
                continue
            if mismatch and not verify_checksums(os.path.join(self.directory, str(step))):
                # Intact on disk but saved for other shapes: the config changed, nothing is damaged. Touch nothing.
                raise CheckpointConfigError(
                    f"checkpoint step {step} in {self.directory} was written with a different model/optimizer config "
                    f"({mismatch}); this config differs from the one the run was trained with (its config.json): resume with "
                    "--workdir alone to use that one, or train this one in another --workdir"
                )
            if mismatch:  # metadata damaged (checksums fail): don't read the arrays
                mismatches.append((step, mismatch))
                unreadable.append(step)
                continue
            try:
                problem = verify_checksums(os.path.join(self.directory, str(step)))
                if problem:
                    raise CheckpointError(problem)
                with _quiet_absl():
                    state, data_state = self.restore(step, abstract_state)
                _check_restored(state, step)
                bad = first_nonfinite_leaf(state)
                if bad is not None:
                    raise CheckpointError(f"{bad} holds NaN/inf")
                problem = check_data(data_state, step) if check_data is not None else None
                if problem:
                    raise CheckpointError(f"saved data position: {problem}")
            except Exception as e:  # orbax/tensorstore raise many types for a damaged step
                if self._retired(step) and relistings < _RELISTINGS:  # while it was read: as above
                    relistings += 1
                    pending = self._untried_newest_first(tried)
                    continue
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                notify(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); trying the previous one")
                unreadable.append(step)
                continue
            for bad_step, why in mismatches:
                notify(f"checkpoint step {bad_step} in {self.directory} does not match the state ({why}); treating it as damaged")
            if unreadable and not self.read_only:
                notify(f"resuming from step {step}; unreadable steps kept aside as <step>.unreadable")
                if jax.process_index() == 0:
                    for bad_step in unreadable:
                        self._move_aside(bad_step)
            elif unreadable:
                notify(f"using step {step}, the newest intact one (read-only: the unreadable steps are left as they are)")
            return state, data_state, step
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} (tried steps {', '.join(map(str, tried))}"
            + (f"; newest: {mismatches[0][1]}" if mismatches else "")
            + "); refusing to start over: move the directory away to train from scratch"
        )

    def _retired(self, step: int) -> bool:
        """A reader's step that is gone: its run's trainer retired it after this reader listed it."""
        return self.read_only and not os.path.isdir(os.path.join(self.directory, str(step)))

    def _untried_newest_first(self, tried: list[int]) -> list[int]:
        self._listed(self._manager.reload)
        return [s for s in reversed(self.all_steps()) if s not in tried]

    def _listed(self, list_steps):
        """Runs an orbax step listing. A reader lists while the run's trainer may be deleting its
        oldest step (``checkpoint.keep``): a step gone between the listing and its stat is listed again."""
        for attempt in range(_LISTING_ATTEMPTS):
            try:
                with _quiet_absl():
                    return list_steps()
            except FileNotFoundError:
                if not self.read_only or attempt == _LISTING_ATTEMPTS - 1:
                    raise

    def _incompatibility(self, step: int, abstract_state: TrainState) -> str | None:
        """Why the saved state's shapes differ from this config's, or None if they match.

        Read from orbax's metadata only, so a config mismatch is reported in one line without
        reading (and failing on) every array of every step. Unreadable metadata returns None and
        is left to the restore attempt.
        """
        try:
            with _quiet_absl():
                saved = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
            saved = shapes_by_name(getattr(saved, "item_metadata", saved))
        except Exception:
            return None
        wanted = shapes_by_name(abstract_state)
        if saved == wanted:
            return None
        params_first = lambda k: (not k.startswith("params"), k)  # noqa: E731  (a param names the change better than its moments)
        differing = sorted((k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k]), key=params_first)
        if differing:
            key = differing[0]
            return f"{key} is {saved[key]} in the checkpoint but {wanted[key]} in this config"
        key = sorted(saved.keys() ^ wanted.keys(), key=params_first)[0]
        return f"{key} is {'only in the checkpoint' if key in saved else 'in this config but not in the checkpoint'}"

    def _move_aside(self, step: int) -> None:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.unreadable"
        if os.path.isdir(src) and not os.path.exists(dst):
            os.rename(src, dst)
        self._manager.reload()

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """Turns a failed write into one CheckpointWriteError line (earlier steps stay intact)."""
        try:
            yield
        except Exception as e:  # orbax re-raises the background thread's error, often wrapped
            cause = _os_error_in(e)
            what = f"checkpoint step {step}" if step is not None else "a checkpoint"
            if cause is None:
                raise
            reason = os.strerror(cause.errno) if cause.errno else str(cause)
            raise CheckpointWriteError(
                f"could not write {what} in {self.directory}: {reason}; earlier checkpoints are intact "
                "(free space, raise the file-size limit or fix the permissions, then run the same command to resume)"
            ) from None

    def wait(self) -> None:
        """Blocks until pending saves are on disk, then seals each with its checksums."""
        with self._write_errors(self._unsealed[-1] if self._unsealed else None):
            self._manager.wait_until_finished()
            if jax.process_index() == 0:
                for step in self._unsealed:
                    step_dir = os.path.join(self.directory, str(step))
                    if not os.path.isdir(step_dir):  # orbax finalizes a step by renaming its temporary directory
                        raise CheckpointWriteError(
                            f"could not write checkpoint step {step} in {self.directory}: it was not finalized; "
                            "earlier checkpoints are intact (run the same command to resume)"
                        )
                    write_checksums(step_dir)
        self._unsealed = []
        self._purge_deleted_steps()

    def _purge_deleted_steps(self) -> None:
        """Removes the steps orbax retired (``keep``) into ``.deleting``: out of the listing already."""
        if not self.read_only and jax.process_index() == 0:
            shutil.rmtree(os.path.join(self.directory, _DELETING), ignore_errors=True)

    def close(self) -> None:
        try:
            if not self.read_only:
                self.wait()
        finally:
            self._manager.close()
            logging.getLogger("absl").removeFilter(self._log_filter)


class _OrbaxErrorLogFilter(logging.Filter):
    """Drops orbax's ERROR records (with their tracebacks): the error itself still reaches ``wait``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _ignore_late_tensorstore_callbacks() -> None:
    """Keeps a failed save's stderr to its one line.

    When one array's write fails, orbax's ``asyncio.run`` stops and closes its event loop while
    tensorstore is still finishing the other writes; each of those then reports, through
    ``sys.unraisablehook``, that it could not call back into the closed loop. Those reports are
    dropped (the failure itself reaches ``wait``); every other unraisable exception goes to the
    hook that was installed before. Installed once per process.
    """
    previous = sys.unraisablehook
    if getattr(previous, "archlab_late_callbacks", False):
        return

    def hook(unraisable) -> None:
        late_callback = (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
                         and str(unraisable.exc_value) == "Event loop is closed")
        if not late_callback:
            previous(unraisable)

    hook.archlab_late_callbacks = True
    sys.unraisablehook = hook


def probe_checkpoint_dir(directory: str) -> None:
    """Proves orbax can write under ``directory`` (a tiny save, then removed), so a path it cannot
    save to (not UTF-8, unwritable, wrong file system) fails before training, not at the first save."""
    try:
        os.fsencode(directory).decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointWriteError(
            f"checkpoint path {os.fsencode(directory)!r} is not valid UTF-8, which orbax/tensorstore cannot write; use another --workdir"
        ) from None
    probe = os.path.join(directory, f".save-probe-{os.getpid()}-{jax.process_index()}")
    try:  # plain file I/O first: orbax's own failure paths can leave threads behind that block exit
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoints in {directory} ({e.strerror or e}); fix it or use another --workdir") from None
    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(probe, "item"), {"probe": np.zeros(2, np.float32)})
            checkpointer.wait_until_finished()
    except Exception as e:
        cause = _os_error_in(e)
        if cause is not None:
            reason = os.strerror(cause.errno)
        else:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointWriteError(f"cannot write checkpoints in {directory} ({reason}); fix it or use another --workdir") from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@contextlib.contextmanager
def _quiet_absl():
    """orbax logs a damaged step at ERROR through absl ("Failed to json parse ..."); the caller
    reports it in one line instead."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind an orbax/tensorstore failure (its cause chain or its message), if any."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for code in (errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM):
        if os.strerror(code) in text or errno.errorcode[code] in text:
            return OSError(code, os.strerror(code))
    if "RESOURCE_EXHAUSTED" in text and "No space" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _file_digests(step_dir: str) -> dict[str, list]:
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == CHECKSUMS or (rel.startswith(f".{CHECKSUMS}.") and rel.endswith(".tmp")):  # the seal, or its temporary file
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digests[rel] = [os.path.getsize(path), h.hexdigest()]
    return digests


def write_checksums(step_dir: str) -> None:
    """Seals a finished step: SHA-256 and size of every file in it, written atomically."""
    write_json_atomically(os.path.join(step_dir, CHECKSUMS), {"algorithm": "sha256", "files": _file_digests(step_dir)},
                          fsync=True, indent=1, sort_keys=True)


def verify_checksums(step_dir: str) -> str | None:
    """None if the step matches its checksums (or predates them), else what differs."""
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
        return None  # written before checksums existed, or the writer died between save and seal
    try:
        with open(path) as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {CHECKSUMS} is unreadable ({e})"
    actual = _file_digests(step_dir)
    for rel, (size, digest) in sorted(expected.items()):
        if rel not in actual:
            return f"{rel} is missing"
        if actual[rel][0] != size:
            return f"{rel} is {actual[rel][0]} bytes, {size} when saved"
        if actual[rel][1] != digest:
            return f"{rel} fails its SHA-256 checksum (bytes changed since it was saved)"
    return None


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def first_nonfinite_leaf(tree) -> str | None:
    """Path of the first floating-point leaf holding NaN/inf (e.g. ``params/dense_0/kernel``), or None."""
    named = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
             if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not named:
        return None
    flags = _finite_flags([leaf for _, leaf in named])  # one array, one host transfer
    flags = np.asarray(flags.addressable_data(0))
    for (path, _), ok in zip(named, flags):
        if not ok:
            return param_path_name(path)
    return None


def _saved_form(state: TrainState) -> dict:
    """The state as orbax stores it: its fields, less ``ema_params`` when None, so a run without
    EMA saves and restores the same tree as checkpoints written before the field existed."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if fields.get("ema_params", 0) is None:
        del fields["ema_params"]
    return fields


def _check_restored(state: TrainState, step: int) -> None:
    if int(state.step) != step:
        raise CheckpointError(f"state.step={int(state.step)} does not match directory step {step}")
