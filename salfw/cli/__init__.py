"""The ``salfw`` command line (click). Commands only: every algorithm lives in
the core, the plugins or the evaluation package, found through the registry."""
