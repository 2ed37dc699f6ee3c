"""KAI runner: the node SDK, node and entrypoint processes, the transport seam (runner.transport)
with its NATS JetStream implementation.

The runner never imports the renderer: the runner image carries only this package.
"""

__version__ = "0.1.0"
