"""Alembic migrations of the catalog (a package so that setuptools ships them with the code)."""
