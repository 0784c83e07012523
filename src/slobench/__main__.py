"""``python -m slobench`` is the ``slobench`` command."""

from slobench.cli.main import app

if __name__ == "__main__":
    app()
