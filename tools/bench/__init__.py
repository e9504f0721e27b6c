"""The benchmarks (docs/benchmarks.md): one script per figure, the ABBA runner they share."""
