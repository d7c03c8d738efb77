"""The registrations of the artifact, model and annotation servicers (what server.py serves of them)."""

from __future__ import annotations

from keel.metadata.v1 import annotations_pb2_grpc, artifacts_pb2_grpc, models_pb2_grpc
from services.kit.server import Registration
from services.metadata.api_annotations import AnnotationApi
from services.metadata.api_artifacts import ArtifactApi
from services.metadata.api_models import ModelApi
from services.metadata.domain import MetadataDomain


def artifact_model_registrations(domain: MetadataDomain) -> list[Registration]:
    """ArtifactService, ModelService and AnnotationService over the domain."""
    return [
        Registration(
            "keel.metadata.v1.ArtifactService",
            artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server,
            ArtifactApi(domain),
        ),
        Registration(
            "keel.metadata.v1.ModelService",
            models_pb2_grpc.add_ModelServiceServicer_to_server,
            ModelApi(domain),
        ),
        Registration(
            "keel.metadata.v1.AnnotationService",
            annotations_pb2_grpc.add_AnnotationServiceServicer_to_server,
            AnnotationApi(domain),
        ),
    ]
