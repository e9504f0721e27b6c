"""The CPU shims, checked inside a forked rank (they change global torch state, never in pytest's own process)."""

import pytest
import torch



def check_shims():
    """Run in a rank (where the launcher has applied the shims): each replaced symbol behaves."""
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from megatron_patch.cpu_compat import apply_cpu_shims

    assert apply_cpu_shims() is True  # idempotent: a second call changes nothing and still answers True
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2, device=0, pin_memory=True).device.type == "cpu"
    x = torch.arange(3.0)
    assert x.cuda() is x and x.to("cuda:1").device.type == "cpu"
    assert x.to(torch.device("cuda"), torch.float64).dtype == torch.float64
    assert x.type() == "torch.cuda.FloatTensor" and x.type(torch.float64).dtype == torch.float64
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    assert end.elapsed_time(start) <= 0 <= start.elapsed_time(end)
    with torch.cuda.stream(torch.cuda.Stream()):
        torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())

    # The RNG tracker: named CPU streams, distinct per TP rank, restored after the fork.
    tensor_parallel.model_parallel_cuda_manual_seed(7, tp_rank=0)
    torch.manual_seed(1)
    outer_next = torch.rand(1)
    torch.manual_seed(1)
    with get_cuda_rng_tracker().fork():
        tp0 = torch.rand(3)
    assert torch.equal(torch.rand(1), outer_next)  # the default stream did not move
    with get_cuda_rng_tracker().fork():
        assert not torch.equal(torch.rand(3), tp0)  # the named stream advanced
    tensor_parallel.model_parallel_cuda_manual_seed(7, tp_rank=1)
    with get_cuda_rng_tracker().fork():
        assert not torch.equal(torch.rand(3), tp0)  # another TP rank draws differently
    tensor_parallel.model_parallel_cuda_manual_seed(7, tp_rank=0)
    with get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(3), tp0)  # and the same seed reproduces


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shims apply only without CUDA")
def test_shims(run_distributed):
    run_distributed(check_shims, 1)


def test_with_cuda_nothing_is_patched(monkeypatch):
    from megatron_patch import cpu_compat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    synchronize = torch.cuda.synchronize
    assert cpu_compat.apply_cpu_shims() is False
    assert torch.cuda.synchronize is synchronize
