"""One module per migration, each holding its SQL text (see journal/migrations.py)."""
