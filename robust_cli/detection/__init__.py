"""Gradient-norm attack detection and the attack that evades it (``robust detect``)."""
