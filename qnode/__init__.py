"""qnode: a durable, partitioned, replicated commit-log broker (the Kafka model) in Python.

The subpackages map onto the repository's top-level folders (see pyproject.toml):
storage, transport, node, coordinator, sdk, loadtest.
"""

__version__ = "0.1.0"
