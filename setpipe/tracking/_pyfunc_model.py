"""The models-from-code entry point MLflow runs to build the pyfunc (nothing is pickled)."""

import mlflow

from setpipe.tracking.pyfunc import SetPyfunc

mlflow.models.set_model(SetPyfunc())
