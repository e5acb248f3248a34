# A package, so that this directory's conftest.py and test modules do not take the
# top-level names `conftest`, `test_*` that tests/ uses (tests/*.py import conftest).
