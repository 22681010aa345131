"""Job specification: pydantic models, YAML loading, overrides, interpolation."""

from setpipe.spec.models import JobSpec

__all__ = ["JobSpec"]
