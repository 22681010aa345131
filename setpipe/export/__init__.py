"""Export a registered model for deployment outside Python: ONNX or torch.export graphs,
whole-set and (MBC encoders) chunked, checked against PyTorch on export."""

from setpipe.export.artifact import ExportError, ExportSummary, export_model
from setpipe.export.runtime import ExportedModel

__all__ = ["ExportError", "ExportSummary", "ExportedModel", "export_model"]
