"""``--trainer megatron-lm``: the same flags, model, data and reweighted loss in Megatron-LM's own loop.

megatron-core 0.17 and later ship Megatron-LM's training loop as ``megatron.training``. This
module hands it what our loop would build: the resolved configuration (presets and family
defaults included) is written back as Megatron-LM's flags, which its own ``parse_and_validate_args``
parses with the ``--reweight-*`` group as ``extra_args_provider``; its ``pretrain`` then runs with
our model provider, our datasets (the blend, the per-domain validation sets) and our forward step,
whose ``loss_func`` is the reweighted loss (:class:`megatron_patch.loss.SampleLoss`).

What only our loop does is refused in one line, never dropped: the metrics file, the weight-health
checks, ``--reweight-group global-batch`` (it needs a first pass over the step), ``--dry-run``,
``--override-data-blend``. Megatron-LM logs the loss report itself (``lm loss``, ``weighted loss``,
``reweight r``, ``ess``, ``max_weight``... on its iteration line).

Process groups: we create them (:func:`megatron_patch.distributed.initialize_distributed`, as our
loop does) and pass ``skip_model_parallel_init=True``; Megatron-LM keeps the existing
``torch.distributed`` group. Its CPU shims are in :mod:`megatron_patch.cpu_compat`
(:func:`~megatron_patch.cpu_compat.apply_megatron_lm_cpu_shims`).
"""

import argparse
import dataclasses
import functools
import sys

import torch

from . import checkpointing
from .arguments import SECTIONS
from .config import RunConfig, build_section, flag_name
from .errors import ArgumentError
from .loss import ReweightConfig, SampleLoss, add_reweight_args, check_reweighting_supported
from .version_guard import find_mismatches, installed_version

# What this module and its shims call in megatron.training (0.19.2), checked before any group
# exists (version_guard's pattern): a renamed symbol is one line, not an AttributeError per rank.
REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    "megatron.training": {"get_args": ()},
    "megatron.training.arguments": {"add_megatron_arguments": ("parser",),
                                    "parse_and_validate_args": ("extra_args_provider",)},
    "megatron.training.argument_utils": {"pretrain_cfg_container_from_args": ("args",)},
    "megatron.training.initialize": {"_compile_dependencies": ()},
    "megatron.training.training": {
        "pretrain": ("cfg_container", "train_valid_test_dataset_provider", "model_type", "forward_step_func",
                     "model_provider", "skip_model_parallel_init"),
        "initialize_megatron": ("allow_no_cuda",),
        "build_pretraining_data_loader": (),
        "load_checkpoint": ("ddp_model", "optimizer", "opt_param_scheduler"),
    },
}

# Our fields that are not Megatron-LM flags but are consumed before its loop starts (by our
# datasets provider, our tokenizer, our presets): nothing is dropped by not passing them on.
CONSUMED_HERE = {
    "model": ("model", "family", "padded_vocab_size"),
    "parallel": ("world_size", "data_parallel_size"),
    "data": ("data_path", "valid_data_path", "split", "mock_data", "domain_weights", "data_cache_path"),
    "training": ("num_microbatches", "trainer"),
}
# Our flags whose job our loop does and Megatron-LM's does not: refused when given.
ONLY_OUR_LOOP = {
    "--metrics-file": "Megatron-LM logs to stdout, --tensorboard-dir or --wandb-project",
    "--dry-run": "run it without --trainer megatron-lm",
    "--override-data-blend": "our loop's check of the checkpoint's blend",
    "--reweight-group": "global-batch needs our loop's first pass over the step",
}


def megatron_lm_available() -> bool:
    try:
        import megatron.training.training  # noqa: F401
    except ImportError:
        return False
    return True


def check_supported(config: RunConfig, argv: list[str]) -> None:
    """Refuse what cannot run in Megatron-LM's loop, naming the flags (one line)."""
    if not megatron_lm_available():
        raise ArgumentError(f"--trainer megatron-lm needs Megatron-LM's loop (megatron.training), which megatron-core "
                            f">= 0.17 ships on Python >= 3.12; this is megatron-core {installed_version()}: "
                            f"drop --trainer megatron-lm or install megatron-core 0.19")
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    refused = [f"{f} ({why})" for f, why in ONLY_OUR_LOOP.items()
               if f in given and not (f == "--reweight-group" and config.reweight.group == "micro-batch")]
    refused += [f"{f} (our loop's weight-health checks)" for f in sorted(given) if f.startswith("--weight-collapse-")]
    if refused:
        raise ArgumentError(f"--trainer megatron-lm: not in Megatron-LM's loop: {'; '.join(refused)}; drop them")
    missing = find_mismatches(REQUIRED)
    if missing:
        raise ArgumentError(f"--trainer megatron-lm: megatron-core {installed_version()}'s megatron.training lacks "
                            f"what it relies on: {'; '.join(missing[:5])}; install megatron-core 0.19")
    megatron_lm_argv(config)  # every other flag has a Megatron-LM spelling


def check_load_dir(load: str, save: str | None) -> None:
    """Refuse a ``--load`` that Megatron-LM's loop cannot resume: nothing there, or our loop's checkpoint."""
    iteration = checkpointing.read_marker(load)
    if iteration is None:
        checkpointing.check_load_dir(load, save)  # the same "no checkpoint there" rule as our loop
        return
    try:
        from megatron.core import dist_checkpointing

        common = dist_checkpointing.load_common_state_dict(checkpointing.checkpoint_dir(load, iteration))
    except Exception:  # noqa: BLE001 - not readable here: Megatron-LM's own loader says why
        return
    if isinstance(common, dict) and common.get("format") == checkpointing.FORMAT_TAG:
        raise ArgumentError(f"--load {load}: a checkpoint of --trainer megatron-core (this project's loop), whose "
                            "layout Megatron-LM's loop does not read; resume it without --trainer megatron-lm")


def _megatron_lm_parser() -> argparse.ArgumentParser:
    from megatron.training.arguments import add_megatron_arguments

    return add_reweight_args(add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False)))


def use_shipped_dataset_helpers() -> None:
    """Skip Megatron-LM's ``make`` of the dataset helpers when the wheel ships them compiled.

    ``initialize_megatron`` compiles ``megatron/core/datasets/helpers.cpp`` with the Makefile of a
    source checkout; the megatron-core wheel ships ``helpers_cpp`` compiled and no Makefile, so
    the ``make`` fails (on any device) and the run exits.
    """
    from megatron.training import initialize

    try:
        import megatron.core.datasets.helpers_cpp  # noqa: F401
    except ImportError:
        return  # a source checkout: let Megatron-LM compile them
    initialize._compile_dependencies = lambda: None


def repair_distributed_optimizer_load() -> None:
    """Load the distributed optimizer without Apex/Transformer Engine the way our checkpoints do.

    Megatron-LM's ``load_checkpoint`` meets three defects there. In fp32 the distributed
    optimizer's main parameters are views of the weights, and it copies the loaded values into
    them with autograd on (torch refuses in-place writes to a leaf that requires grad): the load
    runs under ``no_grad``, as ours does. And the two :mod:`megatron_patch.checkpointing`
    repairs for our loop (torch's Adam has no state before its first step, so building the
    sharded state dict to load into fails; after the load, every parameter's Adam ``step`` is not
    its own). The same two repairs run around Megatron-LM's load; with Apex or Transformer Engine
    (their Adam keeps the step in the groups) both are no-ops.
    """
    from megatron.training import training as mlm_training

    load = mlm_training.load_checkpoint
    if getattr(load, "_repaired", False):
        return

    @functools.wraps(load)
    def load_checkpoint(ddp_model, optimizer, opt_param_scheduler, *args, **kwargs):
        if optimizer is not None:
            checkpointing.give_optimizer_state(optimizer)
        with torch.no_grad():  # fp32: the distributed optimizer's main params are views of the weights
            loaded = load(ddp_model, optimizer, opt_param_scheduler, *args, **kwargs)
        if optimizer is not None:
            checkpointing.restore_adam_steps(optimizer)
        return loaded

    load_checkpoint._repaired = True
    mlm_training.load_checkpoint = load_checkpoint


def megatron_lm_argv(config: RunConfig) -> list[str]:
    """The resolved configuration as Megatron-LM flags: every field that has one, by its spelling."""
    actions = {option: a for a in _megatron_lm_parser()._actions for option in a.option_strings}
    argv = []
    for name, (cls, _) in SECTIONS.items():
        section = getattr(config, name)
        for field in dataclasses.fields(section):
            if field.name in CONSUMED_HERE.get(name, ()) or "help" not in field.metadata:
                continue
            value, spelled = getattr(section, field.name), flag_name(cls, field)
            if spelled not in actions:
                if value != field.default:
                    raise ArgumentError(f"--trainer megatron-lm: {spelled} is not a Megatron-LM flag; drop it")
                continue
            if value is None or value is False:
                continue
            if value is True:
                argv.append(spelled)  # the same switch in both parsers (store_true or store_false)
            elif isinstance(value, (list, tuple)):
                argv += [spelled, *map(str, value)]
            else:
                argv += [spelled, str(value)]
    return [*argv, "--distributed-backend", "nccl" if torch.cuda.is_available() else "gloo"]


@functools.cache
def sample_loss(num_domains: int = 0) -> SampleLoss:
    """The run's loss boundary inside Megatron-LM's loop, built once from its parsed arguments.

    The one piece a Megatron-LM checkout needs (docs/upstream.md): its forward step returns
    ``sample_loss().loss_func(loss_mask)`` after ``sample_loss().start_step(args.curr_iteration)``.
    Built on first use, after Megatron-LM has created the process groups; the ``--reweight-*``
    flags come from ``add_reweight_args`` as ``extra_args_provider``.
    """
    from megatron.core import parallel_state as ps
    from megatron.training import get_args

    args = get_args()
    config = build_section(ReweightConfig, args)
    check_reweighting_supported(config, calculate_per_token_loss=args.calculate_per_token_loss)
    # report_group=False: Megatron-LM's loop sums every report entry as a [sum, count] pair.
    return SampleLoss(config, ps.get_data_parallel_group(), num_domains=num_domains,
                      cp_group=ps.get_context_parallel_group(), report_group=False)


def pretrain(config: RunConfig, tokenizer, datasets_provider, model_provider, forward_step) -> None:
    """Run Megatron-LM's ``pretrain`` with our model provider, datasets and forward step."""
    from megatron.core.enums import ModelType
    from megatron.training import get_args
    from megatron.training import training as mlm_training
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    from .cpu_compat import apply_megatron_lm_cpu_shims
    from .distributed import initialize_distributed, print_rank0, skip_exit_collection

    resolved = config
    initialize_distributed(config.parallel, seed=config.training.seed)  # the groups Megatron-LM keeps
    print_rank0("note: --trainer megatron-lm: Megatron-LM's loop logs, checkpoints and evaluates; our loop's "
                "metrics file and weight-collapse warnings do not run in it (docs/upstream.md)")
    apply_megatron_lm_cpu_shims()
    if config.checkpoint.save:
        checkpointing.fork_write_results_queue()  # Megatron-LM's saves go through the same writer
    use_shipped_dataset_helpers()
    repair_distributed_optimizer_load()
    data = datasets_provider(config, tokenizer)  # on every rank, as in our loop
    valid = list(data.valid.values())
    argv = megatron_lm_argv(config) + (["--multiple-validation-sets"] if len(valid) > 1 else [])
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        args = parse_and_validate_args(extra_args_provider=add_reweight_args)
    finally:
        sys.argv = saved

    def megatron_lm_datasets_provider(train_val_test_num_samples, vp_stage=None):
        return data.train, (valid if len(valid) > 1 else (valid[0] if valid else None)), None

    megatron_lm_datasets_provider.is_distributed = True  # built on every rank, not only TP rank 0

    def megatron_lm_model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                                   pg_collection=None):
        # Megatron-LM's TransformerConfig (config=) is built from the same flags; ours is the one used.
        return model_provider(resolved, pre_process=pre_process, post_process=post_process)

    def megatron_lm_forward_step(data_iterator, model, return_schedule_plan=False):
        loss = sample_loss(len(data.domains))
        loss.start_step(get_args().curr_iteration)
        return forward_step(data_iterator, model, loss=loss)

    mlm_training.pretrain(pretrain_cfg_container_from_args(args), megatron_lm_datasets_provider,
                          ModelType.encoder_or_decoder, megatron_lm_forward_step, model_provider=megatron_lm_model_provider,
                          skip_model_parallel_init=True)
    skip_exit_collection()


