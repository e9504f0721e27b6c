import subprocess
import sys


def test_reweighting_imports_only_torch():
    code = (
        "import sys, reweighting; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('megatron', 'megatron_patch')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
