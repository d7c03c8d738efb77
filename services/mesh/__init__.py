"""The local mesh: runs every Keel service as its own process on localhost (`make run`).

Development and test tooling only; production runs each service as its own
Deployment (deploy/k8s). Nothing here is imported by the services themselves.
"""
