"""Starting training processes: a free port, the torchrun command line, a process-tree kill.

One launcher for the tools (demo, benchmarks, experiments) and the tests: they all start the
entry points the way users do, under torchrun on this machine.
"""

import contextlib
import os
import socket
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(target: Sequence[str], nproc: int, *, port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run`` on one node with ``nproc`` processes, then ``target``.

    ``target`` is a script and its flags (``["pretrain_llama.py", ...]``) or ``["-m", module, ...]``.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()), *target]


def launch_env(**extra: str) -> dict:
    """The environment of a launched run: one intra-op thread per process unless set, quiet warnings."""
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore", **extra)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def run_torchrun(target: Sequence[str], nproc: int, *, timeout: float = 900, check: bool = True,
                 cwd: str = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``target`` under torchrun; returns the CompletedProcess (text stdout and stderr).

    On a timeout the whole process tree is killed, so a hung run does not keep the cores busy, and
    ``TimeoutError`` is raised with the output's tail; with ``check`` a failed run raises
    ``RuntimeError`` with the tail of its output.
    """
    cmd = torchrun_command(target, nproc)
    with subprocess.Popen(cmd, cwd=cwd, env=env or launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            stdout, stderr = proc.communicate()
            raise TimeoutError(f"{' '.join(target[:2])} timed out after {timeout} s:\n{stdout[-3000:]}\n"
                               f"{stderr[-3000:]}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(target[:2])} failed ({result.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return result
