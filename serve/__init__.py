"""baton's HTTP surface and Serve wiring: ingress, agent deployments, traffic split, builder."""
