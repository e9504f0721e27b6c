"""The launcher the tools and tests share: free ports, the torchrun command, killing a hung run."""

import socket
import sys
import time

import pytest

from megatron_patch.launch import free_port, run_torchrun, torchrun_command

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_torchrun_command_is_one_node():
    cmd = torchrun_command(["-m", "tools.demo.run", "--quick"], 2, port=29555)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:11] == ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29555", "-m",
                         "tools.demo.run"]


def test_a_failing_and_a_hung_run(tmp_path):
    failing = tmp_path / "fail.py"
    failing.write_text("import os, sys\nprint('rank', os.environ['RANK'])\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match="failed"):
        run_torchrun([str(failing)], 1, timeout=120)
    assert run_torchrun([str(failing)], 1, timeout=120, check=False).returncode != 0
    hung = tmp_path / "hang.py"
    hung.write_text("import time\ntime.sleep(600)\n")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 5 s"):
        run_torchrun([str(hung)], 1, timeout=5)
    assert time.monotonic() - start < 60  # the tree was killed, not waited for
