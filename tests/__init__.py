"""The test suite, a package: test folders are its subpackages and the shared helpers live in
``tests.helpers`` (``from tests.helpers.e2e import ...``), so no two modules of the same base name
can shadow each other. pytest.ini's ``pythonpath = .`` puts the repository root on ``sys.path``."""
