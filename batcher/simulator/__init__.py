"""A protocol-faithful simulator of the Anthropic API, served on loopback.

A peer of the client, not part of it: it shares only :mod:`batcher.models` and
:mod:`batcher.facts` with the rest of batcher, so a client bug cannot hide behind a simulator
that shares its assumptions.
"""
