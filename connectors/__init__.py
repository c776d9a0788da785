"""Connectors: one module per source type. Each knows only ``connectors.base`` and the engine's data types."""
