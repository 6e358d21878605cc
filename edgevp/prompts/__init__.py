"""Prompt methods. Each module registers one method with `edgevp.registry.register_method`."""
