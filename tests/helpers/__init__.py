"""Helpers shared by the tests (no tests here): multi-process groups (``distributed``), the tiny
end-to-end runs (``e2e``), a local Slurm cluster (``slurm_cluster``) and the stand-in trainer its
jobs launch (``fake_trainer``, a script). Fixtures that hand them out are declared in conftest.py."""
