"""The only code that touches megatron-core: the reweighted loss, the CPU shims, and (from the
other modules) arguments, models, data, the training loop and checkpointing.

Importing the package imports nothing heavy; import the submodule you need
(``megatron_patch.loss``, ``megatron_patch.cpu_compat``).
"""
