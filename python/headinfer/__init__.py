"""headinfer: exact long-context inference with a head-wise KV cache, for transformers users.

    from headinfer import HeadInferModel
    headinfer_model = HeadInferModel(model, gpu_mem="24GiB")   # a transformers causal LM
    output = headinfer_model.generate(input_ids, max_new_tokens=64)

The engine is C++ (headinfer._core); this package only maps transformers' arguments onto it.
"""
from ._core import HeadInferError, built_with_cuda
from .model import GenerateOutput, HeadInferModel, plan

__all__ = ["HeadInferModel", "HeadInferError", "GenerateOutput", "plan", "built_with_cuda"]
__version__ = "0.1.0"
