"""mmray: Ray-based hyperparameter search for balanced audio-visual learning."""

__version__ = "0.1.0"
