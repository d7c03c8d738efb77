"""The metadata service (workspace server): projects, stacks, pipelines, runs, artifacts and models."""
