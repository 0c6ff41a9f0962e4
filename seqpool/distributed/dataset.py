"""Ray Data: one ``Embedder`` per actor, mapped over a ``ray.data.Dataset``.

Ray is an optional extra; everything that needs it imports it through :func:`import_ray`,
so a user without it gets one line naming the extra, and ``import seqpool`` never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from seqpool.checks import number, positive_int
from seqpool.engine.embedder import Embedder
from seqpool.errors import SeqpoolError

RAY_EXTRA = 'the Ray engine needs Ray, which is not installed; install it with: pip install "seqpool[ray]"'
#: Rows per ``map_batches`` call: enough for the Encoder to sort by length and fill its
#: token budget, few enough that a restarted actor redoes seconds of work, not minutes.
DEFAULT_RAY_BATCH_SIZE = 1024
#: Seconds a cluster named by address has to answer: Ray 2.60's own join retries 20 times,
#: ~40 s each, when nothing answers (about 13 minutes before it gives up).
DEFAULT_RAY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RayOptions:
    """How a run uses Ray: which cluster (``ray_address``; None: a local Ray sized to this
    machine) and how long it has to answer (``ray_timeout`` seconds); ``workers`` actors (None:
    one per CPU, or per GPU with ``num_gpus``), each reserving ``num_cpus`` CPUs and
    ``num_gpus`` GPUs; ``rows_per_call`` rows sent to an actor at a time (None: sized to the
    run); ``max_attempts`` tries per call or shard before the run ends naming it.
    Construction checks what needs no cluster; the cluster's resources are checked on it.
    """

    ray_address: str | None = None
    ray_timeout: float = DEFAULT_RAY_TIMEOUT_S
    workers: int | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    rows_per_call: int | None = None
    max_attempts: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_attempts", positive_int(self.max_attempts, "max_attempts"))
        object.__setattr__(self, "workers", None if self.workers is None else check_workers(self.workers))
        object.__setattr__(self, "rows_per_call", positive_int(self.rows_per_call, "rows_per_call", optional=True))
        object.__setattr__(self, "ray_timeout", check_timeout(self.ray_timeout))


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded, or one SeqpoolError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SeqpoolError(RAY_EXTRA) from None
    return ray


def embed_dataset(ds: Any, text_column: str = "text", *, workers: int | None = None,
                  batch_size: int = DEFAULT_RAY_BATCH_SIZE, num_cpus: float = 1, num_gpus: float = 0,
                  **embedder_kwargs: Any) -> Any:
    """``ds`` plus one float32 vector column per strategy, embedded by a pool of actors.

    Every column of ``ds`` (e.g. a row id) is carried through unchanged. ``workers`` actors
    (default: as many as the cluster's CPUs, or GPUs, allow) each hold one model and
    reserve ``num_cpus`` CPUs and ``num_gpus`` GPUs; with ``num_gpus > 0`` the model runs on
    the actor's GPU. ``embedder_kwargs`` are :class:`Embedder`'s (model, strategies,
    normalize, layer, dtype, max_length, device, ...). Lazy, like any Ray Dataset: nothing
    runs until the result is consumed (``write_parquet``, ``iter_batches``, ...).
    """
    ray = import_ray()
    embedder = Embedder(text_column=text_column, **embedder_kwargs)
    return map_embedder(ds, type(embedder), workers=workers, batch_size=batch_size, num_cpus=num_cpus,
                        num_gpus=num_gpus, constructor_kwargs=embedder.settings, ray=ray)


def map_embedder(ds: Any, worker_class: type, *, workers: int | None, batch_size: int, num_cpus: float,
                 num_gpus: float, ray: Any, constructor_args: tuple = (),
                 constructor_kwargs: dict[str, Any] | None = None, max_task_retries: int | None = None) -> Any:
    """``ds.map_batches(worker_class, compute=ActorPoolStrategy(...))`` with checked resources.

    ``max_task_retries``: how often a call whose actor died is sent again (Ray Data's default: forever)."""
    positive_int(batch_size, "batch_size", what="a whole number of rows, at least 1")
    num_cpus, num_gpus = check_resources(ray, num_cpus, num_gpus)
    size = default_workers(ray, num_cpus, num_gpus) if workers is None else check_workers(workers)
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) takes max_task_retries only among the extra remote arguments, which it
        # marks deprecated (gone in 2.64) without a named replacement yet; revisit when bumping Ray.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return ds.map_batches(worker_class, fn_constructor_args=constructor_args,
                              fn_constructor_kwargs=constructor_kwargs or {}, batch_size=batch_size,
                              compute=ray.data.ActorPoolStrategy(size=size), num_cpus=num_cpus,
                              num_gpus=num_gpus or None, udf_modifying_row_count=False,
                              **({} if max_task_retries is None else {"max_task_retries": max_task_retries}))


def check_workers(workers: Any) -> int:
    return positive_int(workers, "workers", what="a whole number of actors, at least 1")


def check_resources(ray: Any, num_cpus: Any, num_gpus: Any) -> tuple[float, float]:
    """Per-actor CPUs and GPUs as numbers the cluster can grant; a GPU request on a
    cluster without GPUs fails now, in one line, instead of waiting forever for one."""
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        number(value, name, at_least=0, what="a number >= 0 per actor")
    if num_cpus == 0 and num_gpus == 0:
        raise SeqpoolError("each actor needs num_cpus > 0 or num_gpus > 0")
    available = ray.cluster_resources()
    if num_gpus > 0 and available.get("GPU", 0) < num_gpus:
        raise SeqpoolError(f"num_gpus={num_gpus} per actor, but the Ray cluster has "
                           f"{available.get('GPU', 0):g} GPUs (CUDA absent); use num_gpus=0 to run on CPUs")
    if num_cpus > available.get("CPU", 0):
        raise SeqpoolError(f"num_cpus={num_cpus} per actor, but the Ray cluster has {available.get('CPU', 0):g} CPUs")
    return float(num_cpus), float(num_gpus)


def default_workers(ray: Any, num_cpus: float, num_gpus: float) -> int:
    """As many actors as the cluster's CPUs (or GPUs, when actors take GPUs) allow."""
    available = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, int(available.get("GPU", 0) // num_gpus))
    return max(1, int(available.get("CPU", 1) // num_cpus))


def check_timeout(timeout: Any) -> float:
    """``ray_timeout`` as a number of seconds > 0, or one SeqpoolError naming it."""
    return number(timeout, "ray_timeout", above=0, what="a number of seconds > 0")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, quiet: bool = False,
                timeout: float = DEFAULT_RAY_TIMEOUT_S) -> Iterator[Any]:
    """Ray for one run: the caller's if it already called ``ray.init``; else a cluster joined
    at ``address`` (``auto``, ``host:port``, ``ray://host:port``), which must answer within
    ``timeout`` seconds (:func:`wait_for_cluster`); else a local instance sized to this
    machine. Whatever this starts or joins, it leaves again at the end.

    Ray's own INFO logs and progress bars stay off: seqpool reports progress itself.
    ``quiet`` also silences what Ray's C++ core prints straight to file descriptor 2
    (notes such as "actor ... has constructor arguments in the object store").
    """
    ray = import_ray()
    with _stderr_to_devnull(quiet), _quiet_ray_data(ray):
        if ray.is_initialized():
            yield ray
        else:
            if address is not None:
                wait_for_cluster(address, timeout)
            with _started_ray(ray, address, num_cpus):
                yield ray


def wait_for_cluster(address: str, timeout: float) -> None:
    """Return once a Ray cluster answers at ``address``; one SeqpoolError naming it after ``timeout`` s.

    ``ray.init(address=...)`` cannot be bounded from Python: its GCS connection timeout and
    retry count are read from the environment when Ray is imported, and a thread running it
    could not be stopped. So the address is probed first, as Ray will connect to it: a TCP
    connection (refused at once when nothing listens), then the opening of an HTTP/2 (gRPC)
    session, which a port held by something other than Ray -- the dashboard's HTTP port, say
    -- never answers. With ``RAY_USE_TLS`` only the TCP connection is probed.
    """
    target = _bootstrap_address(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout
    where = repr(address) if target == address else f"{address!r} ({target})"

    def failure(why: str, waited: bool = False) -> SeqpoolError:
        longer = f", or wait longer than ray_timeout={timeout:g}" if waited else ""
        return SeqpoolError(f"cannot join the Ray cluster at {where}: {why}; check the address and that the "
                            f"cluster is up{longer}")

    host, _, port = target.rpartition(":")
    connected = False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as connection:
            connected = True
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            connection.sendall(_HTTP2_PREFACE)
            answer = b""
            while len(answer) < 9 and (chunk := connection.recv(9 - len(answer))):
                answer += chunk
    except socket.timeout:
        raise failure(f"{'it accepted the connection but ' if connected else ''}nothing answered within "
                      f"{timeout:g} s", waited=True) from None
    except (OSError, ValueError) as error:
        raise failure(str(getattr(error, "strerror", None) or error).lower()) from None
    if len(answer) < 9 or answer[3] != 0x4:  # a gRPC server opens with a SETTINGS frame (type 4)
        raise failure("it accepts connections but does not answer as Ray does (is it another port of the "
                      "cluster, e.g. the dashboard's?)")


#: What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _bootstrap_address(address: str) -> str | None:
    """``host:port`` that ``ray.init(address)`` will connect to first (the GCS, or the Ray
    Client server of a ``ray://`` address), or None when ``auto`` finds no cluster."""
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto" and os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        address = os.environ["RAY_ADDRESS"]
    if address.startswith("ray://"):
        target = address[len("ray://"):].split("/")[0]
        return target if ":" in target.lstrip("[").split("]")[-1] else f"{target}:10001"
    try:
        return canonicalize_bootstrap_address(address)
    except ConnectionError:  # "auto" found no cluster: ray.init says so itself, at once
        return None
    except (ValueError, OSError) as error:
        raise SeqpoolError(f"cannot join the Ray cluster at {address!r}: {error}; give it as host:port, "
                           f"ray://host:port or auto") from None


@contextlib.contextmanager
def _started_ray(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[None]:
    from seqpool.threads import available_cpus

    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address is None:
            # Ray runs its workers at nice 15 so that its daemons stay responsive; on an instance
            # started for this one job the actors *are* the work, and at nice 15 they lose their
            # cores to every other process. A cluster joined at an address keeps its own setting.
            ray.init(num_cpus=num_cpus or available_cpus(), _system_config={"worker_niceness": 0}, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        detail = " ".join(str(error).split())[:200]
        raise SeqpoolError(f"cannot {'start Ray' if address is None else f'join the Ray cluster at {address!r}'}: "
                           f"{detail}") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _stderr_to_devnull(enabled: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (Python's own writes included)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars or log lines on stderr during the run (a failure reaches
    the caller as an exception, reported once); restored after."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = context.enable_progress_bars, logger.level
    context.enable_progress_bars = False
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        context.enable_progress_bars, _ = saved
        logger.setLevel(saved[1])
