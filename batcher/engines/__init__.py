"""Engines that run a job beyond one process: :mod:`batcher.engines.ray_limiter` (one rate budget
for a Ray cluster). Nothing here imports ``ray`` at import time: ``batcher --help`` stays light."""
