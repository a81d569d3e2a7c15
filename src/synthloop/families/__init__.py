"""Task families: one module each, owning its config sections (pydantic models, no ML framework),
its planning usage and its wiring of a task to its models (``build``, where the heavy imports are).

``synthloop.configs.FAMILIES`` maps ``task.kind`` to these modules; each exposes ``FAMILY``.
"""
