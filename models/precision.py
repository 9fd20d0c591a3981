"""A network's precision on a GPU actor: the job file's ``compute.dtype``.

bfloat16 and float16 halve the bytes a network moves and run its matrix products on the GPU's
tensor cores. The demo's scorer casts its own weights (``TabularScorer.to``). A user's
``mlflow.pytorch`` network runs under ``torch.autocast`` instead: its weights stay as logged,
and autocast picks per operation (products in the lower precision, reductions and softmax in
float32), which is what PyTorch recommends for inference on a model lakecast did not write.

Imported by the actors only: it imports torch.
"""

from __future__ import annotations

from typing import Any

import torch


class Autocast(torch.nn.Module):
    """``net`` run under ``torch.autocast(device_type, dtype)``, its floating-point output handed
    back as float32: MLflow's pyfunc wrapper turns the output into NumPy, which has no bfloat16,
    and a probability rounded to bfloat16's 8 bits would lose what the lower precision inside
    the network does not."""

    def __init__(self, net: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def autocast_pyfunc(pyfunc: Any, device: str, dtype: str) -> bool:
    """Run the network inside an ``mlflow.pytorch`` pyfunc model under :class:`Autocast`.

    False, and the model unchanged, for any other model (a custom ``PythonModel``, scikit-learn,
    a forecasting model): lakecast cannot tell where their arithmetic happens, so they score in
    their own precision."""
    impl = getattr(pyfunc, "_model_impl", None)  # MLflow's flavor object behind the pyfunc
    net = getattr(impl, "pytorch_model", None)
    if not isinstance(net, torch.nn.Module) or getattr(impl, "_is_forecasting_model", True):
        return False
    if not isinstance(net, Autocast):
        impl.pytorch_model = Autocast(net, torch.device(device).type, getattr(torch, dtype))
    return True
