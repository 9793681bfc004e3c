"""ipvslb: a highly available control-plane load balancer for self-hosted Kubernetes."""

__version__ = "0.1.0"
