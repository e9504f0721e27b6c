"""Tools: the data tools at the top (``tools/preprocess_data.py`` ...), their library in ``tools.data``,
the benchmarks in ``tools.bench``, the CPU demo in ``tools.demo``, experiments in ``tools.experiments``."""
