"""salfw's small, stable core: adapters, explanation, registry, hookspecs,
perturbations, parameters and errors. Imports nothing from plugins,
evaluation or cli."""
