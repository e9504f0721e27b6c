"""Run megatron-core 0.16.1 on CPU with gloo: the shims, applied only when CUDA is absent.

megatron-core assumes a GPU in a few places that have nothing to do with the math: it allocates
bookkeeping tensors with ``device="cuda"``, asks ``torch.cuda`` for the current device, streams,
events and RNG states, and synchronises the device around timers and collectives. On a machine
without CUDA (CI, laptops, the CPU demo) :func:`apply_cpu_shims` replaces exactly those symbols so
the same model, schedules, DDP, optimizers and dist_checkpointing run on the CPU. With CUDA
present it does nothing: GPU runs use megatron-core untouched.

Replaced symbols, and why:

====================================== =========================================================
symbol                                 why / CPU replacement
====================================== =========================================================
tensor factories' ``device="cuda"``,   the schedules allocate ``torch.zeros(..., device="cuda")``,
``Tensor.cuda()``, ``Tensor.to(cuda)`` DDP/optimizer buffers use ``device=current_device()``,
``pin_memory=True``                    checkpoint loading calls ``.cuda()``: a
                                       ``TorchFunctionMode`` maps every CUDA device argument (str,
                                       ``torch.device`` or GPU index) to the CPU and drops
                                       ``pin_memory`` (it needs an accelerator).
``torch.cuda.current_device``          used as a ``device=`` argument (RoPE buffers, grad buffers,
                                       the distributed optimizer): answers ``torch.device("cpu")``.
``torch.cuda.synchronize``             timers, DDP and checkpointing synchronise; the CPU runs
                                       eagerly, so a no-op is exact.
``torch.cuda.Stream``, ``Event``,      overlap helpers and timers create streams/events: one
``stream``, ``current_stream``,        stand-in stream whose ``wait_*``/``synchronize`` are
``default_stream``, ``set_stream``     no-ops, and an event that records wall time.
``torch.cuda.get_rng_state``,          the RNG tracker saves/restores CUDA generator states:
``set_rng_state``                      they act on the CPU generator instead.
``CudaRNGStatesTracker.add``/``fork``  megatron's tracker keeps one named RNG stream per parallel
                                       axis (TP ranks draw different init/dropout); on CPU the
                                       named streams are CPU generator states swapped in and out,
                                       so TP shards still initialise from different seeds.
``Tensor.type()`` (no argument)        the (distributed) optimizer and grad clipping accept a
                                       param only if its type string is ``torch.cuda.*Tensor``:
                                       CPU tensors answer that name.
``torch.cuda.mem_get_info``,           memory reports query them: zeros / no-op.
``reset_peak_memory_stats``
====================================== =========================================================

Anything here is a stand-in for a device that is absent; nothing changes numerics on the CPU.
Exercised with gloo (tests/megatron_patch): GPTModel with the local layer spec under TP=2, PP=2
and DP=2 through ``get_forward_backward_func``, megatron-core DDP, ``finalize_model_grads``,
``get_megatron_optimizer`` (Adam with and without the distributed optimizer, SGD). Also tried by
hand (TP=2 and PP=2, world 4): bf16 ``Float16Module``, overlapped grad reduce / param gather,
``Timers``, and ``dist_checkpointing.save``/``load`` of model and optimizer state, the
distributed optimizer's with ``metadata={"distrib_optim_sharding_type": "dp_reshardable"}`` (its
default sharding type is refused by the torch_dist format on any device). The torch_dist save
needs the ``psutil`` package.

The mode is entered once and stays for the life of the process (it is a global change): call
:func:`apply_cpu_shims` in a training process or a test's worker process, not inside a pytest
process that runs unrelated tests.
"""

import contextlib
import functools
import time

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False


def _is_cuda_device(device) -> bool:
    """Whether a ``device=`` value names a GPU: ``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``, ``0``."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare GPU index (``device=local_rank``); bool is an int subclass but never a device.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA device arguments of every torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # The optimizers accept params only if ``param.type()`` is 'torch.cuda.FloatTensor' etc.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _CpuStream:
    """Stand-in for ``torch.cuda.Stream``: CPU work is already ordered, so waits are no-ops."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        event = event if event is not None else _CpuEvent()
        event.record(self)
        return event

    def synchronize(self):
        pass

    def query(self):
        return True


class _CpuEvent:
    """Stand-in for ``torch.cuda.Event``: records wall time, so ``elapsed_time`` (ms) still means something."""

    def __init__(self, *args, **kwargs):
        self._time = None

    def record(self, stream=None):
        self._time = time.perf_counter()

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end_event):
        return (end_event._time - self._time) * 1000.0


_DEFAULT_STREAM = _CpuStream()


def _tracker_add(self, name, seed):
    """``CudaRNGStatesTracker.add`` on the CPU generator: a named state seeded with ``seed``."""
    self._is_initialized = True
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    if name in self.states_:
        raise Exception(f"rng state {name} already exists")
    self.seeds_.add(seed)
    self.states_[name] = torch.Generator().manual_seed(seed).get_state()


@contextlib.contextmanager
def _tracker_fork(self, name="model-parallel-rng"):
    """``CudaRNGStatesTracker.fork`` on the CPU generator: run the block on the named state."""
    if name not in self.states_:
        raise Exception(f"rng state {name} is not added (call model_parallel_cuda_manual_seed first)")
    outer = torch.get_rng_state()
    torch.set_rng_state(self.states_[name])
    try:
        yield
    finally:
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)


def apply_cpu_shims() -> bool:
    """Make megatron-core run on the CPU when CUDA is unavailable; idempotent.

    Returns True if the shims are active (now or from an earlier call), False when CUDA is
    available and nothing was changed. Call it before building models or process groups.
    """
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mcore_random

    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = lambda device=None: None
    cuda.Stream = _CpuStream
    cuda.Event = _CpuEvent
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.set_stream = lambda stream: None
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda.mem_get_info = lambda device=None: (0, 0)
    cuda.reset_peak_memory_stats = lambda device=None: None
    mcore_random.CudaRNGStatesTracker.add = _tracker_add
    mcore_random.CudaRNGStatesTracker.fork = _tracker_fork
    # Entered for the life of the process: the mode is thread-local, and megatron-core runs the
    # forward, backward and DDP hooks on the thread that called the schedule.
    _CudaToCpuMode().__enter__()
    _APPLIED = True
    return True


def apply_megatron_lm_cpu_shims() -> bool:
    """What Megatron-LM's own loop (``megatron.training``, ``--trainer megatron-lm``) needs on the CPU.

    On top of :func:`apply_cpu_shims`; nothing when CUDA is present. Replaced, and why:

    - ``initialize_megatron`` asserts CUDA unless called with ``allow_no_cuda=True``, which
      ``pretrain`` never passes: it gets ``allow_no_cuda=True``.
    - ``build_pretraining_data_loader``: the DataLoader draws its base seed from the global torch
      generator when its iterator starts. On a GPU dropout draws from the CUDA generator, so that
      draw is harmless; on the CPU dropout draws from the same global generator, and a resumed
      run (whose generator was restored from the checkpoint, then moved by the draw) used other
      dropout masks than the uninterrupted run. Each loader gets a private generator instead
      (our loop's ``batch_iterator`` does the same).
    - ``torch.cuda.set_device``: the CPU has no device to set: a no-op.
    """
    if not apply_cpu_shims():
        return False
    from megatron.training import training as mlm_training

    if not getattr(mlm_training.initialize_megatron, "_cpu_shim", False):
        shimmed = functools.partial(mlm_training.initialize_megatron, allow_no_cuda=True)
        shimmed._cpu_shim = True
        mlm_training.initialize_megatron = shimmed
    if not getattr(mlm_training.build_pretraining_data_loader, "_cpu_shim", False):
        build = mlm_training.build_pretraining_data_loader

        def build_pretraining_data_loader(*args, **kwargs):
            loader = build(*args, **kwargs)
            if loader is not None:
                loader.generator = torch.Generator()
            return loader

        build_pretraining_data_loader._cpu_shim = True
        mlm_training.build_pretraining_data_loader = build_pretraining_data_loader
    torch.cuda.set_device = lambda device: None
    return True
