"""The gateway: load balancing over server replicas (power of two choices or consistent hashing),
health checks and retries. Any HTTP load balancer works in front of replicas too; this one knows the
protocol's health routes and which refusals are safe to retry.

Modules: ``balancing`` (strategies), ``proxy`` (the ASGI app), ``settings`` (``[gateway]``); this
face stays import-light because the project settings import it.
"""

from mlscale.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings"]
