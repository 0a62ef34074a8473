"""Independent jobs (VNN-COMP instances, inputs of a comparison) on one machine or a cluster.

One mechanism for every sweep: `run_jobs(fn, jobs, workers, cluster)` yields (index, result) as
jobs finish. workers = 1 runs them here, in order; workers > 1 uses a local process pool
(concurrent.futures); `cluster="tcp://host:port"` submits them to an existing Dask distributed
scheduler (the optional `dask[distributed]` dependency). `fn` must be a module-level function.

Local workers start from a fresh process ("forkserver", or "spawn" where there is none), never
by forking this one: a fork inherits HiGHS's and torch's thread pools in whatever state they are
in, and a MILP solve in the child can then wait forever on a lock no thread will release.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import InputError


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1,
             cluster: Optional[str] = None) -> Iterator[tuple[int, Any]]:
    """Yield (job index, fn(*job)) for every job, in completion order."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if cluster is not None:
        try:
            from dask.distributed import Client, as_completed as dask_completed
        except ImportError:
            raise InputError("--cluster needs dask.distributed: pip install 'dask[distributed]'") \
                from None
        try:
            client = Client(cluster, timeout=10)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {cluster} ({exc})") from None
        try:
            futures = {client.submit(fn, *job, pure=False): i for i, job in enumerate(jobs)}
            for future in dask_completed(futures):
                yield futures[future], future.result()
        finally:
            client.close()
        return
    if workers == 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_leave_ctrl_c_to_the_parent) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:  # Ctrl-C, an error, or the consumer stopped: stop the workers
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _leave_ctrl_c_to_the_parent() -> None:
    """Workers ignore SIGINT (a terminal sends it to the whole group): the parent stops them,
    instead of each printing its own KeyboardInterrupt and the pool waiting on the rest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
