"""slobench: how much real traffic can this serving setup carry while every application meets its SLO?"""

__version__ = "0.1.0"
