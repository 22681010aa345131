"""Set encoders: the MBC protocol, DeepSets, UMBC, the Set Transformer, heads and the estimator."""

from setpipe.models.build import build_model
from setpipe.models.protocol import MBCEncoder, MBCState
from setpipe.models.set_model import SetModel

__all__ = ["MBCEncoder", "MBCState", "SetModel", "build_model"]
