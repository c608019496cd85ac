"""The one training loop, and the launchers that run it in-process, as a Tune trial, or on Ray Train workers."""
