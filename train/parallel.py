"""Named mesh, logical-axis rules, the shardings derived from them, and multi-host init.

Models name their axes (``batch``, ``embed``, ``heads``, ``mlp``, ``vocab`` ...); the config's
``parallel.mesh`` builds a mesh such as ``data:4,model:2`` (axes ``data``, ``fsdp``, ``model``) and
``parallel.rules`` maps logical names onto mesh axes, either as a preset from ``RULE_SETS`` or as
``logical:axis[+axis],...``. Params and optimizer state are created already sharded by jitting init
with these shardings, and the train step is ``jax.jit`` with in/out shardings: that is pjit in
today's JAX (``train.jit_mode``). ``parallel.mode=pmap`` runs the same train step under ``jax.pmap``
(the legacy path, ``train.pmap``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from archlab.train.errors import MeshError
from archlab.train.tree_paths import param_path_name

MESH_AXES = ("data", "fsdp", "model")

# Presets for ``parallel.rules``. Rules are tried in order and a mesh axis is used at most once per
# array, so under ``fsdp`` an activation [batch, length, embed] shards batch over data+fsdp and keeps
# embed whole, while a parameter [vocab, embed] shards embed over fsdp (ZeRO-3 / FSDP). Axes the mesh
# lacks are dropped, so ``default`` is data parallel on a data-only mesh, FSDP where an ``fsdp`` axis
# exists, and Megatron tensor parallel (heads and MLP hidden split) where a ``model`` axis exists.
RULE_SETS = {
    "data_parallel": "batch:data+fsdp",
    "fsdp": "batch:data+fsdp,embed:fsdp",
    "tensor_parallel": "batch:data+fsdp,heads:model,mlp:model,vocab:model",
    "default": "batch:data+fsdp,embed:fsdp,heads:model,mlp:model,vocab:model",
}


def parse_mesh_spec(spec: str, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``"data:-1,model:2"`` -> (("data", "model"), (n/2, 2)); one -1 means "the rest".

    The mesh must use exactly ``num_devices`` devices (``parallel.num_devices`` picks a subset).
    """
    names, sizes = [], []
    for part in spec.split(","):
        name, sep, size = part.strip().partition(":")
        if not sep or not name:
            raise MeshError(f"bad mesh spec {spec!r}: expected 'axis:size,...' e.g. 'data:4,model:2'")
        if name not in MESH_AXES:
            raise MeshError(f"bad mesh spec {spec!r}: unknown axis {name!r}; axes are {', '.join(MESH_AXES)}")
        try:
            sizes.append(int(size))
        except ValueError:
            raise MeshError(f"bad mesh spec {spec!r}: size {size!r} of axis {name!r} is not an integer") from None
        names.append(name)
    if len(set(names)) != len(names):
        raise MeshError(f"bad mesh spec {spec!r}: repeated axis name")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"bad mesh spec {spec!r}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"mesh {spec} does not divide {num_devices} devices (the fixed axes take {known})")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"mesh {spec} needs {math.prod(sizes)} devices, found {num_devices}; "
            "use -1 for one axis to take the rest, or parallel.num_devices to use a subset"
        )
    return tuple(names), tuple(sizes)


def mesh_devices(num_devices: int = 0) -> list:
    """All devices (process-major, as jax.devices() orders them), or the first ``num_devices``."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise MeshError(f"parallel.num_devices={num_devices} but {len(devices)} devices are available (0 means all)")
    if num_devices and jax.process_count() > 1 and num_devices != len(devices):
        raise MeshError("parallel.num_devices must be 0 (all devices) in a multi-process run")
    return devices[:num_devices] if num_devices else devices


def make_mesh(spec: str, num_devices: int = 0) -> Mesh:
    devices = mesh_devices(num_devices)
    names, sizes = parse_mesh_spec(spec, len(devices))
    return Mesh(np.array(devices).reshape(sizes), names)


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, map(int, mesh.devices.shape)))


def parse_rules(rules: str, mesh: Mesh) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """A preset name or ``"batch:data+fsdp,heads:model"`` -> flax logical axis rules.

    Mesh axes the mesh lacks (or has with size 1) are dropped, so one rule set serves every mesh.
    """
    text = RULE_SETS.get(rules.strip(), rules)
    sizes = mesh_shape(mesh)
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        logical, sep, targets = part.partition(":")
        if not sep or not logical:
            raise MeshError(
                f"bad rule {part!r} in parallel.rules: expected a preset ({', '.join(RULE_SETS)}) or 'logical:mesh_axis[+axis],...'"
            )
        axes = [a.strip() for a in targets.split("+") if a.strip() and a.strip().lower() != "none"]
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise MeshError(f"bad rule {part!r} in parallel.rules: unknown mesh axis {unknown[0]!r}; axes are {', '.join(MESH_AXES)}")
        kept = tuple(a for a in axes if sizes.get(a, 1) > 1)
        out.append((logical, kept[0] if len(kept) == 1 else (kept or None)))
    return tuple(out)


def batch_axes(rules) -> tuple[str, ...]:
    """The mesh axes the ``batch`` logical axis is split over."""
    target = dict(rules).get("batch")
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def data_shard_count(mesh: Mesh, rules) -> int:
    sizes = mesh_shape(mesh)
    return math.prod(sizes[a] for a in batch_axes(rules))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """Mesh + logical rules active while tracing, so activation constraints resolve."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], sizes: dict[str, int]) -> tuple[PartitionSpec, list[int]]:
    """Drops mesh axes from dims they do not divide; returns the spec and the dims dropped."""
    entries, dropped = [], []
    for dim, entry in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        if axes and shape[dim] % math.prod(sizes[a] for a in axes):
            entries.append(None)
            dropped.append(dim)
        else:
            entries.append(entry)
    return PartitionSpec(*entries), dropped


def logical_shardings(boxed_tree, mesh: Mesh, rules, notes: list[str] | None = None):
    """NamedShardings for a pytree whose leaves are boxed with logical names (others replicated).

    A dimension a mesh axis does not divide (e.g. 3 heads over model:2) is replicated instead of
    failing at compile time; each such case is appended to ``notes`` for the start-up report.
    """
    specs = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(boxed_tree)
    sizes = mesh_shape(mesh)

    def fit(path, spec, leaf):
        fitted, dropped = _fit_spec(spec, tuple(leaf.shape), sizes)
        if dropped and notes is not None:
            notes.append(f"{param_path_name(path)} {tuple(leaf.shape)}: dim {dropped} not divisible as {spec}; replicated along it")
        return NamedSharding(mesh, fitted)

    return jax.tree_util.tree_map_with_path(fit, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over whatever ``batch`` maps to; the rest replicated."""
    axes = batch_axes(rules)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places this process's rows of a global batch onto the mesh."""
    return jax.make_array_from_process_local_data(sharding, batch)


def gather_to_host(tree, mesh: Mesh):
    """The whole of each (possibly sharded, possibly multi-process) array as numpy, on every process.

    A collective: in a multi-process run every process must call it.
    """
    full = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), full)


# ------------------------------------------------------------------------------ start-up report


def sharding_report(params, shardings, mesh: Mesh, *, top: int = 6, replicated_warn_size: int = 1 << 16) -> tuple[list[str], list[str]]:
    """(lines, warnings): device kind/count, the mesh, the largest params with their
    PartitionSpec, and a warning for each param of at least ``replicated_warn_size`` elements left
    fully replicated while a ``model`` or ``fsdp`` axis (size > 1) exists.
    """
    devices = mesh.devices.flatten()
    kinds = sorted({d.device_kind for d in devices})
    lines = [
        f"devices: {len(devices)} x {', '.join(kinds)} ({jax.process_count()} process(es), {jax.local_device_count()} local)",
        f"mesh: {', '.join(f'{k}={v}' for k, v in mesh_shape(mesh).items())}",
    ]
    rows = [
        (param_path_name(path), tuple(leaf.shape), sharding.spec)
        for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings))
    ]
    rows.sort(key=lambda r: -math.prod(r[1]))
    if rows:
        width = max(len(r[0]) for r in rows[:top])
        lines.append(f"largest params ({len(rows)} in all):")
        lines += [f"  {name:<{width}}  {str(shape):<16} {spec}" for name, shape, spec in rows[:top]]
    splitting = [a for a in ("model", "fsdp") if mesh_shape(mesh).get(a, 1) > 1]
    warnings = []
    if splitting:
        left = [(n, s) for n, s, spec in rows if math.prod(s) >= replicated_warn_size and all(e is None for e in spec)]
        if left:
            names = ", ".join(f"{n} {s}" for n, s in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
            warnings.append(
                f"warning: {len(left)} param(s) of >= {replicated_warn_size:,} elements are fully replicated although the mesh has "
                f"{'/'.join(splitting)}: {names}; give them logical axis names or extend parallel.rules"
            )
    return lines, warnings


# ---------------------------------------------------------------------------------- multi-host


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def cluster_says_multiprocess() -> str | None:
    """The scheduler whose environment says this job has several processes, or None."""
    if (_env_int("SLURM_NTASKS") or _env_int("SLURM_NPROCS") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "SLURM"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "Cloud TPU"
    if os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU (multislice)"
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and (_env_int("JAX_NUM_PROCESSES") or 1) > 1:
        return "JAX_COORDINATOR_ADDRESS"
    return None


def initialize_distributed(mode: str, *, coordinator: str = "", num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout_s: int = 30,
                           initialization_timeout_s: int = 120) -> str:
    """Starts JAX's multi-process runtime per ``parallel.distributed``; returns what it did.

    ``auto``: ``jax.distributed.initialize()`` with the scheduler's own settings when SLURM, Open MPI,
    Cloud TPU or ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` say there are several processes.
    ``explicit``: coordinator/num_processes/process_id from the arguments, else from the env vars
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``. ``off``: single process.
    Must run before anything touches a JAX backend. CPU collectives use gloo (needed for CPU
    multi-process; GPUs and TPUs use their own).
    """
    if mode == "off":
        return "single process (parallel.distributed=off)"
    if mode not in ("auto", "explicit"):
        raise MeshError(f"parallel.distributed must be auto, off or explicit (got {mode!r})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if mode == "auto":
        source = cluster_says_multiprocess()
        if source is None:
            return "single process (no multi-process scheduler detected)"
        kwargs = {}
        if source == "JAX_COORDINATOR_ADDRESS":
            kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=_env_int("JAX_NUM_PROCESSES"),
                          process_id=_env_int("JAX_PROCESS_ID"))
            port = kwargs["coordinator_address"].rpartition(":")[2]
            if kwargs["process_id"] == 0 and port.isdigit():
                _check_coordinator_port(port, f"process 0, coordinator {kwargs['coordinator_address']}")
        _initialize_within(initialization_timeout_s, f"set up by {source}", "not every process joined",
                           heartbeat_timeout_seconds=heartbeat_timeout_s, **kwargs)
        return f"{jax.process_count()} processes ({source}), this is process {jax.process_index()}"
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    host, sep, port = coordinator.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise MeshError(f"parallel.distributed=explicit needs --coordinator=HOST:PORT (or JAX_COORDINATOR_ADDRESS); got {coordinator!r}")
    if num_processes is None or num_processes < 1:
        raise MeshError("parallel.distributed=explicit needs --num_processes=N >= 1 (or JAX_NUM_PROCESSES)")
    if process_id is None or not 0 <= process_id < num_processes:
        raise MeshError(f"parallel.distributed=explicit needs --process_id in 0..{num_processes - 1} (or JAX_PROCESS_ID); got {process_id}")
    who = f"process {process_id} of {num_processes}, coordinator {coordinator}"
    if process_id == 0:
        _check_coordinator_port(port, who)
    waiting = ("process 0 hosts the coordinator and not every process joined" if process_id == 0 else
               "the coordinator was not reachable (is process 0 running there?) or not every process joined")
    _initialize_within(initialization_timeout_s, who, waiting, coordinator_address=coordinator, num_processes=num_processes,
                       process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_s)
    return f"process {process_id} of {num_processes}, coordinator {coordinator}"


# jax.distributed.initialize is given this much longer than parallel.initialization_timeout_s, so
# the watchdog below, not XLA, ends a start-up that times out (XLA aborts from C++ a few seconds
# after its own deadline, with a fatal log and a stack trace instead of a message).
_XLA_DEADLINE_MARGIN_S = 30


def startup_timeout_message(timeout_s: int, who: str, waiting: str) -> str:
    return (f"jax.distributed did not start within parallel.initialization_timeout_s={timeout_s} s ({who}: {waiting}); start "
            f"every process with the same --coordinator and --num_processes, or raise --config.parallel.initialization_timeout_s")


@contextlib.contextmanager
def _stderr_held_back():
    """Yields the real stderr's file descriptor while fd 2 goes to a temporary file, whose text
    (C++ log lines) is replayed on stderr when the block succeeds and dropped when it raises."""
    import tempfile

    sys.stderr.flush()
    real = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield real
        except BaseException:
            os.dup2(real, 2)
            raise
        else:
            sys.stderr.flush()
            os.dup2(real, 2)
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
        finally:
            os.close(real)


def _check_coordinator_port(port: str, who: str) -> None:
    """MeshError when process 0 cannot listen on the coordinator's ``port`` (all interfaces, as
    jax.distributed binds it unless JAX_COORDINATOR_BIND_ADDRESS says otherwise). jaxlib 0.10 logs
    ``Failed to add port to server`` and then usually crashes (SIGSEGV) on a port in use, so it is
    tried here first; the probe socket is closed at once (it never listens, so nothing lingers)."""
    import errno
    import socket

    if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", int(port))
    except OSError:  # no IPv6 on this host
        probe, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", int(port))
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            why = "is already in use on this host" if e.errno == errno.EADDRINUSE else f"cannot be bound here ({e.strerror})"
            raise MeshError(f"jax.distributed could not start ({who}): the coordinator's port {port} {why}; "
                            f"give --coordinator a free port on process 0's host") from None


def _initialize_within(timeout_s: int, who: str, waiting: str, **kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)``, ended after ``timeout_s`` seconds with one stderr
    line and exit status 2 when a peer or the coordinator never shows up.

    jaxlib 0.10 does not raise on that timeout: its coordination client aborts the process from C++
    (``client.h: Terminating process because the JAX distributed service detected fatal errors ...
    DEADLINE_EXCEEDED`` and a stack trace, status 134), a few seconds after the deadline it is
    given. The blocking connect releases the GIL, so a watchdog thread reports the timeout and
    leaves first (``os._exit``: nothing can unblock the connect). Other start-up failures (e.g. the
    coordinator's port already in use) raise MeshError; C++ log lines are held back meanwhile.
    """
    done = threading.Event()

    with _stderr_held_back() as real_stderr:
        def watchdog():
            if done.wait(timeout_s):
                return
            sys.stdout.flush()
            os.write(real_stderr, f"error: {startup_timeout_message(timeout_s, who, waiting)}\n".encode())
            os._exit(2)

        threading.Thread(target=watchdog, name="jax.distributed start-up watchdog", daemon=True).start()
        try:
            jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s + _XLA_DEADLINE_MARGIN_S)
        except Exception as e:  # a RuntimeError / XlaRuntimeError from the coordination service
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise MeshError(f"jax.distributed could not start ({who}): {reason}") from None
        finally:
            done.set()
