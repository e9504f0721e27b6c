"""Exit conditions agree across ranks (a SIGTERM that reaches one rank stops all)."""

import torch


def exit_reasons_in_rank():
    """A SIGTERM that reaches only rank 1 stops both ranks; so does the duration limit."""
    import os
    import signal

    from megatron_patch.exits import ExitConditions

    exits = ExitConditions(signal_handler=True, duration_in_mins=None, interval=None)
    first = exits.reason(1)
    if torch.distributed.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    second = exits.reason(2)
    timed = ExitConditions(signal_handler=False, duration_in_mins=0.0, interval=None).reason(3)
    every = ExitConditions(signal_handler=False, duration_in_mins=None, interval=2)
    return first, second, timed, every.reason(3), every.reason(4)


def test_exit_conditions_agree_across_ranks(run_distributed):
    for first, second, timed, odd, even in run_distributed(exit_reasons_in_rank, world_size=2):
        assert first is None and second == "received SIGTERM (--exit-signal-handler)"
        assert "--exit-duration-in-mins 0.0" in timed
        assert odd is None and even == "iteration 4 (--exit-interval 2)"
