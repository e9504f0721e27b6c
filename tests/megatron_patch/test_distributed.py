"""Process start-up pieces: the generators' state round trip (the global-batch first pass and
checkpoints rely on it) and the world of one that ``python pretrain_llama.py`` starts."""

import random

import numpy as np
import torch


def rng_round_trip_in_rank():
    """Run in a rank: draws after set_rng_state(rng_state()) repeat, for every generator."""
    from megatron.core import tensor_parallel

    from megatron_patch.distributed import rng_state, set_rng_state

    tensor_parallel.model_parallel_cuda_manual_seed(7)
    saved = rng_state()

    def draw():
        with tensor_parallel.get_cuda_rng_tracker().fork():
            tracked = torch.rand(3).tolist()  # dropout inside TP regions draws here
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), tracked

    first = draw()
    set_rng_state(saved)
    return first, draw(), draw()


def test_rng_state_round_trip(run_distributed):
    ((first, again, later),) = run_distributed(rng_round_trip_in_rank, world_size=1)
    assert first == again and later != first


def test_a_world_of_one_without_a_launcher(monkeypatch):
    # What initialize_distributed sets when RANK is absent; checked without starting a group.
    import megatron_patch.distributed as dist

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so that what initialize_distributed sets is undone afterwards
        monkeypatch.delenv(key)
    started = {}
    monkeypatch.setattr(dist.torch.distributed, "init_process_group", lambda backend, timeout: started.update(
        backend=backend, env={k: dist.os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}))
    monkeypatch.setattr(dist.ps, "initialize_model_parallel", lambda **kw: started.update(layout=kw))
    monkeypatch.setattr(dist, "set_seeds", lambda seed: None)
    monkeypatch.setattr(dist, "apply_cpu_shims", lambda: True)
    from tests.helpers.config import tiny_config

    dist.initialize_distributed(tiny_config().parallel, seed=1)
    env = started["env"]
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "1", "127.0.0.1") and int(env["MASTER_PORT"]) > 0
    assert started["layout"] == {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                                 "context_parallel_size": 1}
