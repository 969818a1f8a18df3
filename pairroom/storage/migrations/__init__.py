"""Alembic migrations for the recorder's tables; ``SqlStore.open()`` runs them to head."""
