"""slobench: can this LLM serving setup carry real traffic while every application meets its SLO?"""

__version__ = "0.1.0"
