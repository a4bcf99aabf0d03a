"""Executors for many independent tasks (one per class): local (sequential or processes) and Ray.

``get_executor(kind)`` returns an object with ``.map(fn, tasks, *, shared=None)``: it calls
``fn(task, **shared)`` for every task and returns the results **in task order**. ``shared`` holds
the large inputs every task reads (the model split, the settings); each executor ships them
once, not once per task:

- ``LocalExecutor()`` runs the tasks one after the other in this process (the default);
  ``LocalExecutor(n_workers=N)`` uses a pool of N processes started with the ``spawn`` context
  (fork is unsafe with torch's thread pools), handing ``shared`` to each worker once.
- ``RayExecutor(address=...)`` runs each task as a Ray task (``ray.remote`` with ``num_cpus`` /
  ``num_gpus`` per task), puts ``shared`` into Ray's object store once with ``ray.put`` and
  passes the ``ObjectRef``s, and collects results with ``ray.get``; Ray does the scheduling.
  ``address=None`` starts a local Ray runtime (shut down by :meth:`RayExecutor.close`),
  ``"auto"`` joins the cluster started on this machine with ``ray start``, and
  ``"HOST:6379"`` / ``"ray://HOST:10001"`` join a remote one. An already initialised Ray
  (``ray.init`` by the caller) is used as it is and left running.

Determinism: every executor runs each task with ``torch.set_num_threads(threads)`` (default 1)
and restores the previous count afterwards. Floating-point reductions split over a different
number of threads add in a different order, so fixing the count is what makes a task give the
same bits whether it runs here, in a pool process or in a Ray worker; the work is parallel
across tasks instead. Randomness comes from each task's own seed (``random_state``).

Examples
--------
>>> import operator
>>> with get_executor("local") as ex:
...     ex.map(operator.neg, [1, 2, 3])
[-1, -2, -3]
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from face_concepts._core.validation import check_int

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "get_executor", "run_task"]

EXECUTORS = ("local", "ray")
RAY_MISSING = "the ray executor needs Ray, which is not installed: pip install 'face-concepts[ray]'"

OnDone = Callable[[int, Any], None]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(
    fn: Callable[..., Any], task: Any, shared: Mapping[str, Any], threads: int | None = 1
) -> Any:
    """``fn(task, **shared)`` with torch limited to ``threads`` threads (what every executor runs).

    Examples
    --------
    >>> run_task(pow, 2, {"exp": 3})
    8
    """
    with _threads(threads):
        return fn(task, **shared)


class Executor:
    """Base class: ``map`` in task order, usable as a context manager (``close`` on exit)."""

    kind = "?"

    def __init__(self, *, threads: int | None = 1) -> None:
        self.threads = None if threads is None else check_int(threads, "threads", minimum=1)

    def map(
        self,
        fn: Callable[..., Any],
        tasks: Sequence[Any],
        *,
        shared: Mapping[str, Any] | None = None,
        on_done: OnDone | None = None,
    ) -> list[Any]:
        """Results of ``fn(task, **shared)`` for every task, in task order.

        ``on_done(index, result)`` is called in the driver as each task finishes (in completion
        order), e.g. for progress messages. A failing task raises its own exception here.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (processes, a local Ray runtime)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description, recorded with results."""
        return {"kind": self.kind, "threads_per_task": self.threads}

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_shared(shared: Mapping[str, Any] | None) -> dict[str, Any]:
    if shared is None:
        return {}
    if not isinstance(shared, Mapping) or not all(isinstance(k, str) for k in shared):
        raise TypeError(f"shared must be a dict of str to values, got {type(shared).__name__}")
    return dict(shared)


# ---------------------------------------------------------------------- local
_WORKER_SHARED: dict[str, Any] = {}


def _pool_init(shared: dict[str, Any]) -> None:
    # Runs once per pool process: the shared inputs are unpickled once per worker, not per task.
    _WORKER_SHARED.clear()
    _WORKER_SHARED.update(shared)


def _pool_call(fn: Callable[..., Any], task: Any, threads: int | None) -> Any:
    return run_task(fn, task, _WORKER_SHARED, threads)


class LocalExecutor(Executor):
    """Tasks in this process (``n_workers`` None or 1) or in a pool of spawned processes.

    Examples
    --------
    >>> LocalExecutor().map(abs, [-1, 2])
    [1, 2]
    """

    kind = "local"

    def __init__(self, n_workers: int | None = None, *, threads: int | None = 1) -> None:
        super().__init__(threads=threads)
        self.n_workers = None if n_workers is None else check_int(n_workers, "n_workers", minimum=1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_workers": self.n_workers or 1}

    def map(self, fn, tasks, *, shared=None, on_done=None):
        shared, tasks = _check_shared(shared), list(tasks)
        if (self.n_workers or 1) == 1:
            results = []
            for i, task in enumerate(tasks):
                results.append(run_task(fn, task, shared, self.threads))
                if on_done is not None:
                    on_done(i, results[-1])
            return results
        ctx = multiprocessing.get_context("spawn")
        workers = min(self.n_workers, max(1, len(tasks)))
        with cf.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_pool_init, initargs=(shared,)
        ) as pool:
            futures = [pool.submit(_pool_call, fn, t, self.threads) for t in tasks]
            index = {f: i for i, f in enumerate(futures)}
            try:
                for f in cf.as_completed(futures):
                    result = f.result()  # re-raises the task's exception
                    if on_done is not None:
                        on_done(index[f], result)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            return [f.result() for f in futures]


# ---------------------------------------------------------------------- Ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    return ray


class RayExecutor(Executor):
    """Each task a Ray task; shared inputs put once into Ray's object store.

    Parameters
    ----------
    address : str or None
        None: start a local Ray runtime (``n_workers`` CPUs, default all); ``"auto"``: join the
        cluster of this machine (``ray start --head``); ``"HOST:6379"`` or ``"ray://HOST:10001"``:
        join a remote one. Ignored when Ray is already initialised in this process.
    n_workers : int or None
        CPUs of the local runtime started here; when joining a cluster, Ray schedules by the
        resources each task asks for and this is ignored.
    num_cpus, num_gpus : float
        Resources each task asks Ray for (``num_gpus=1`` places every task on its own GPU).
    threads : int or None
        torch threads inside each task (see the module docstring).

    Examples
    --------
    >>> with RayExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     ex.map(abs, [-1, 2])
    [1, 2]
    """

    kind = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        threads: int | None = 1,
    ) -> None:
        super().__init__(threads=threads)
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, got {type(address).__name__}")
        self.n_workers = None if n_workers is None else check_int(n_workers, "n_workers", minimum=1)
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self._ray = _import_ray()
        self._started = False
        if not self._ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False}
            if address is None and self.n_workers is not None:
                kwargs["num_cpus"] = self.n_workers
            self._ray.init(**kwargs)
            self._started = True

    def describe(self) -> dict[str, Any]:
        res = self._ray.cluster_resources()
        return {
            **super().describe(),
            "address": self.address,
            "num_cpus_per_task": self.num_cpus,
            "num_gpus_per_task": self.num_gpus,
            "cluster_cpus": res.get("CPU"),
            "cluster_gpus": res.get("GPU", 0),
        }

    def map(self, fn, tasks, *, shared=None, on_done=None):
        ray = self._ray
        shared, tasks = _check_shared(shared), list(tasks)
        # One copy of each large input in the object store; tasks receive the references and
        # Ray resolves them (zero-copy for tensors' numpy buffers on the same node).
        refs = {k: ray.put(v) for k, v in shared.items()}
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_ray_call)
        # Top-level ObjectRef arguments are resolved by Ray before the call (nested ones are not).
        keys = tuple(refs)
        futures = [remote.remote(fn, t, self.threads, keys, *refs.values()) for t in tasks]
        index = {f: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        pending = list(futures)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for f in done:
                    results[index[f]] = ray.get(f)  # fetched once, kept in task order
                    if on_done is not None:
                        on_done(index[f], results[index[f]])
            return results
        except ray.exceptions.RayTaskError as exc:
            for f in pending:
                ray.cancel(f)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the task's own error, as the local executor raises it
            raise

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _ray_call(
    fn: Callable[..., Any], task: Any, threads: int | None, keys: tuple[str, ...], *values: Any
) -> Any:
    return run_task(fn, task, dict(zip(keys, values)), threads)


def get_executor(
    kind: str = "local",
    *,
    n_workers: int | None = None,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    threads: int | None = 1,
) -> Executor:
    """An executor by name: ``"local"`` (default) or ``"ray"``.

    Parameters
    ----------
    kind : {"local", "ray"}
    n_workers : int, optional
        local: processes (None or 1: sequential in this process); ray: CPUs of a local runtime.
    address : str, optional
        ray only: None (start a local runtime), ``"auto"`` or ``"HOST:PORT"``.
    num_cpus, num_gpus : float
        ray only: resources per task.
    threads : int or None
        torch threads inside each task (1 makes results identical across executors).

    Examples
    --------
    >>> get_executor("local").describe()["kind"]
    'local'
    >>> get_executor("spark")
    Traceback (most recent call last):
    ...
    ValueError: executor must be one of ['local', 'ray'], got 'spark'
    """
    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {kind!r}")
    if kind == "local":
        if address is not None:
            raise ValueError(
                f"address={address!r} is only used by the ray executor (got executor 'local')"
            )
        if num_gpus:
            raise ValueError("num_gpus is only used by the ray executor (got executor 'local')")
        return LocalExecutor(n_workers, threads=threads)
    return RayExecutor(
        address, n_workers=n_workers, num_cpus=num_cpus, num_gpus=num_gpus, threads=threads
    )
