"""The run core: what online mode (:mod:`batcher.pipeline`) and batch mode (:mod:`batcher.batches`)
both use, and what neither driver reaches past. See README's architecture section for the path of
a row through it."""
