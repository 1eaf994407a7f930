"""Module runners: one module per way of starting a module (container engine, local process)."""
