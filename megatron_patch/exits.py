"""When to stop early: ``--exit-signal-handler``, ``--exit-duration-in-mins``, ``--exit-interval``.

Slurm sends SIGTERM some time before it kills a job (preemption, time limit). With
``--exit-signal-handler`` the handler only records the signal; the loop asks
:meth:`ExitConditions.reason` after each iteration, all ranks agree (a signal may reach only
some of them), and the loop saves a checkpoint and returns, so the process exits 0.

The agreement is one all-reduce of two numbers per iteration over a gloo (CPU) group: it never
waits for the GPU's queued work, so the step stays free of host-device syncs.
"""

import signal
import time

import torch

from .distributed import new_cpu_group


class ExitConditions:
    """Tracks SIGTERM, wall time and the iteration count against the exit flags."""

    def __init__(self, *, signal_handler: bool, duration_in_mins: float | None, interval: int | None):
        self.signal_handler = signal_handler
        self.duration_in_mins = duration_in_mins
        self.interval = interval
        self.start = time.time()
        self.signal_received = False
        self.group = new_cpu_group() if signal_handler or duration_in_mins is not None else None
        if signal_handler:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signal_received = True

    def reason(self, iteration: int) -> str | None:
        """Why to stop after ``iteration`` (the same answer on every rank), or None to go on."""
        if self.group is not None:
            minutes = (time.time() - self.start) / 60.0
            flags = torch.tensor([float(self.signal_received), minutes])
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.group)
            signalled, minutes = flags.tolist()
            if signalled:
                return "received SIGTERM (--exit-signal-handler)"
            if self.duration_in_mins is not None and minutes > self.duration_in_mins:
                return f"ran {minutes:.1f} minutes (--exit-duration-in-mins {self.duration_in_mins})"
        if self.interval and iteration % self.interval == 0:
            return f"iteration {iteration} (--exit-interval {self.interval})"
        return None
