"""How many torch threads a run uses: one for small networks, else the cores nobody else is using.

Intra-op threads pay off only when one operation has enough work to share. A network's
multiply-accumulates per input (MACs: the weight count of its Dense layers, weights times output
positions for Conv2d) measure that work; below `SMALL_NETWORK_MACS` (2M: ACAS Xu has 13k, the
mnist_fc nets 0.2-0.4M) torch's thread start and join cost more than they save, and with a busy
neighbour each synchronisation waits for a descheduled thread (2 cores shared with other jobs,
ACAS Xu 1_1 prop_3 next to one busy process: 123 s with torch's default 2 threads, 15.5 s with
one; without it: 52 s and 10.9 s; benchmarks/results/runtime.md). Larger networks get the free
cores: the CPUs this process may run on minus the 1-minute load average (other processes'
runnable threads), at least one.

`--threads N` on the command line overrides the policy (`configure(net, requested=N)`).
"""

from __future__ import annotations

import os
from typing import Optional

SMALL_NETWORK_MACS = 2_000_000


def multiply_accumulates(net) -> int:
    """Multiply-accumulates of one forward pass of `net` (one input)."""
    from .network import Conv2d, Dense

    if getattr(net, "is_graph", False):
        return net.multiply_accumulates()
    total = 0
    for layer in net.layers:
        if isinstance(layer, Dense):
            total += int(layer.weight.size)
        elif isinstance(layer, Conv2d):
            total += int(layer.weight.size) * int(layer.out_shape[1] * layer.out_shape[2])
    return total


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores() -> int:
    """Available CPUs minus the 1-minute load average (rounded), at least 1."""
    cpus = available_cpus()
    try:
        busy = int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cpus, cpus - busy))


def policy_threads(net=None) -> int:
    """The policy's thread count: 1 below SMALL_NETWORK_MACS, else the free cores."""
    if net is not None and multiply_accumulates(net) < SMALL_NETWORK_MACS:
        return 1
    return free_cores()


def check_threads(requested: Optional[int]) -> Optional[int]:
    """`requested` if None or >= 1; else InputError (the --threads flag)."""
    from .errors import InputError

    if requested is not None and requested < 1:
        raise InputError(f"--threads must be at least 1, got {requested}")
    return requested


def configure(net=None, requested: Optional[int] = None) -> int:
    """Set torch's intra-op threads: `requested`, else the policy for `net`; returns the count."""
    import torch

    threads = check_threads(requested) or policy_threads(net)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
