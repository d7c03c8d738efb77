"""Keel's edge: stateless REST⇄gRPC transcoding and the OpenAPI document (see docs/gateway.md)."""
