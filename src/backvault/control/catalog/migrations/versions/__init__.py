"""Catalog migration scripts, one module per revision."""
