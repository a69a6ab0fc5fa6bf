"""The commands: what a ``batcher <command>`` prints and exits with, over the library (which never
prints: ``tests/test_layers.py``). ``batcher/cli.py`` is the thin click layer over these."""
