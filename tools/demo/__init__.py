"""The CPU demo (docs/demo.md): ``run`` trains uniform and LinUpper, ``report`` writes the summary."""
