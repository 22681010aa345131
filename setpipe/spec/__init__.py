"""Job specification: pydantic models, YAML loading, overrides, interpolation."""

from setpipe.spec.loading import dump_job, job_from_dict, load_job
from setpipe.spec.models import JobSpec

__all__ = ["JobSpec", "dump_job", "job_from_dict", "load_job"]
