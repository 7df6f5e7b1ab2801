"""HeadInferModel: a transformers causal LM (or a checkpoint folder) run by headinfer's engine."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from ._generate import GenerateOutput, resolve_generate_args, to_output  # noqa: F401

# The options HeadInferModel takes, as the CLI's flags (--gpu-mem 24GiB is gpu_mem="24GiB").
_OPTIONS = {
    "device": "auto",    # cpu | cuda | auto (CUDA when a GPU is present)
    "threads": 0,        # CPU threads (0: every core)
    "gpu_mem": None,     # device memory cap ("24GiB", or bytes); default: CUDA the free memory, CPU unlimited
    "host_mem": None,    # host memory for offloaded KV; default: MemAvailable
    "offload": "auto",   # auto | all | none
    "kv_group": 0,       # kv heads per transfer group (0: the planner picks)
    "hybrid": "off",     # auto | off: attend part of the host-tier KV on the CPU in decode
    "chunk": None,       # prefill tokens per forward (default: the engine's)
    "ctx": None,         # context to reserve ("128K", or tokens); default: prompt + new tokens per call
}


def _parse_options(options: dict) -> _core.Options:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; HeadInferModel takes {', '.join(_OPTIONS)}")
    o = {**_OPTIONS, **options}
    for key in ("gpu_mem", "host_mem", "ctx"):
        if o[key] is not None and not isinstance(o[key], str):
            if isinstance(o[key], bool) or not isinstance(o[key], (int, np.integer)):
                raise TypeError(f"{key} must be a size string such as '24GiB' or an integer, not {o[key]!r}")
            o[key] = str(int(o[key]))
    for key in ("device", "offload", "hybrid"):
        if not isinstance(o[key], str):
            raise TypeError(f"{key} must be a string, not {o[key]!r}")
    for key in ("threads", "kv_group", "chunk"):
        if o[key] is not None and (isinstance(o[key], bool) or not isinstance(o[key], (int, np.integer))):
            raise TypeError(f"{key} must be an integer, not {o[key]!r}")
    return _core.Options(device=o["device"], threads=int(o["threads"]), gpu_mem=o["gpu_mem"],
                         host_mem=o["host_mem"], offload=o["offload"], kv_group=int(o["kv_group"]),
                         hybrid=o["hybrid"], chunk=None if o["chunk"] is None else int(o["chunk"]), ctx=o["ctx"])


@dataclass
class _GenerationDefaults:
    """transformers' GenerationConfig defaults, overridden by the model's generation config.
    max_length None: transformers' default, 20 new tokens (up to max_position_embeddings)."""
    max_length: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = 50
    top_p: float = 1.0

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "_GenerationDefaults":
        out = cls()
        for key in ("max_length", "do_sample", "temperature", "top_k", "top_p"):
            if d and d.get(key) is not None:
                setattr(out, key, d[key])
        return out


def _torch():
    import torch
    return torch


_TORCH_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _config_json(config: dict, weights_dtype: Optional[str]) -> str:
    config = dict(config)
    if weights_dtype is not None:  # what the plan counts the weights at
        config["torch_dtype"] = weights_dtype
        config["dtype"] = weights_dtype
    return json.dumps(config, default=str)


class HeadInferModel:
    """Runs a transformers causal LM with headinfer's engine.

    ``HeadInferModel(model, gpu_mem="24GiB", offload="auto", hybrid="off", kv_group=0, chunk=None,
    host_mem=None, device="auto", ctx=None)``: the config comes from ``model.config`` (parsed as
    config.json is), the weights from ``model.state_dict()`` through DLPack. Tensors already on the
    engine's device (GPU tensors on CUDA, CPU tensors on the CPU device) are used in place, not
    copied; the model must then stay alive and unchanged while this object is used.
    """

    def __init__(self, model: Any, **options: Any):
        self._options = _parse_options(options)
        self._device = _core.Device(self._options)
        torch = _torch()
        names, arrays = [], []
        weights_dtype = None
        on_cuda = False
        for name, t in model.state_dict().items():
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                continue  # integer buffers and the like are no weights the engine reads
            t = t.detach()
            if t.is_cuda and self._device.kind == "cpu":
                t = t.cpu()
            if not t.is_contiguous():
                t = t.contiguous()
            if t.data_ptr() % 64 != 0:
                t = t.clone()  # a view into the middle of a storage: the kernels want aligned rows
            on_cuda = on_cuda or t.is_cuda
            if name.endswith("embed_tokens.weight"):
                weights_dtype = str(t.dtype).replace("torch.", "")
            names.append(name)
            arrays.append(t)
        if on_cuda:
            torch.cuda.synchronize()  # the engine's stream must see the weights written
        config = model.config.to_dict()
        generation = getattr(model, "generation_config", None)
        generation = generation.to_dict() if generation is not None else None
        self._checkpoint = _core.Checkpoint.from_memory(
            config_json=_config_json(config, weights_dtype),
            generation_config_json=json.dumps(generation, default=str) if generation else "",
            names=names, arrays=arrays, device=self._device, origin=f"{type(model).__name__}.state_dict()")
        self._setup(_GenerationDefaults.from_dict(generation), source=type(model).__name__)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **options: Any) -> "HeadInferModel":
        """Loads a checkpoint folder (config.json, *.safetensors) with headinfer's own loader: no
        torch or transformers needed; generate() then takes and returns numpy arrays."""
        self = cls.__new__(cls)
        self._options = _parse_options(options)
        self._device = _core.Device(self._options)
        self._checkpoint = _core.Checkpoint.open(os.fspath(folder))
        generation = None
        path = os.path.join(os.fspath(folder), "generation_config.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                generation = json.load(f)
        self._setup(_GenerationDefaults.from_dict(generation), source=os.fspath(folder))
        return self

    def _setup(self, defaults: _GenerationDefaults, source: str) -> None:
        self._defaults = defaults
        self._source = source
        self._engine = None
        self.stats: dict = {}  # the last generate()'s timings and memory (prefill_seconds, ...)

    @property
    def device(self) -> str:
        """The engine's device, e.g. 'cpu (16 threads)' or the GPU's name."""
        return self._device.name

    @property
    def vocab_size(self) -> int:
        return self._checkpoint.vocab_size

    def _plan_gpu_mem(self) -> int:
        # As the engine plans: the device's budget; without gpu_mem a CUDA device's budget is the
        # free memory, which the weights used in place have already left.
        budget = self._device.memory_budget
        if budget > 0 and not self._options.gpu_mem_given:
            budget += self._checkpoint.in_place_bytes
        return budget

    def plan(self, context: int | str) -> dict:
        """The planner's placement for `context` tokens with this model's options: the dict
        ``headinfer plan --json`` prints (fits, message, resident/streamed groups, every byte)."""
        ctx = _core.parse_count(context, "context") if isinstance(context, str) else int(context)
        return json.loads(_core.plan_json(self._checkpoint.config_json, self._source, self._options, ctx,
                                          self._plan_gpu_mem()))

    def placement(self) -> Optional[dict]:
        """The placement the engine of the last generate() runs (None before the first)."""
        return None if self._engine is None else self._engine.placement()

    def _engine_for(self, context: int, prompt_tokens: int = 0):
        if self._engine is None or self._engine.context < context:
            self._engine = None  # free the old KV cache before planning the new one
            # The prompt's length lets the engine plan its first chunk while the weights copy.
            self._engine = _core.Engine(self._checkpoint, self._device, self._options, context, prompt_tokens)
        return self._engine

    def generate(self, input_ids: Any = None, attention_mask: Any = None, *, max_length: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, do_sample: Optional[bool] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 eos_token_id: Optional[int | Sequence[int]] = None, streamer: Any = None,
                 output_logits: Optional[bool] = None, return_dict_in_generate: Optional[bool] = None,
                 seed: Optional[int] = None, **kwargs: Any):
        """transformers' generate for one sequence: returns [1, prompt + new] token ids (a
        torch.LongTensor for torch input, else numpy int64), or with return_dict_in_generate=True
        an object with .sequences and .logits (with output_logits=True: a tuple of [1, vocab]
        float32 logits, one per new token). `seed` fixes the sampler (default: drawn from torch's,
        else numpy's, global generator, so torch.manual_seed makes sampling reproducible)."""
        a = resolve_generate_args(self, input_ids, attention_mask, max_length, max_new_tokens, do_sample,
                                  temperature, top_k, top_p, eos_token_id, seed, kwargs)
        context = self._options.ctx if self._options.ctx is not None else a.n_prompt + max(a.max_new_tokens, 1)
        if a.n_prompt > context:
            raise ValueError(f"input_ids has {a.n_prompt} tokens, longer than the context ctx={context}")
        limit = self._checkpoint.max_position_embeddings
        if 0 < limit < context:
            warnings.warn(f"context {context} is beyond the config's max_position_embeddings ({limit})",
                          stacklevel=2)
        engine = self._engine_for(context, a.n_prompt)
        if streamer is not None:
            streamer.put(a.prompt_for_streamer)
        on_token = None
        if streamer is not None:
            on_token = lambda token: streamer.put(a.token_for_streamer(token))  # noqa: E731
        progress = _Progress(a.n_prompt)
        try:
            tokens, logits, stats = engine.generate(
                prompt=a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, seed=a.seed, eos_ids=a.eos_ids, want_logits=bool(output_logits),
                on_token=on_token, on_progress=progress.update if progress.enabled else None)
        finally:
            progress.close()
        if streamer is not None:
            streamer.end()
        self.stats = stats
        return to_output(a, tokens, logits, bool(return_dict_in_generate), bool(output_logits))

    def __call__(self, *args, **kwargs):
        raise TypeError("HeadInferModel runs generate() only (no forward pass with gradients)")

    def __repr__(self) -> str:
        return f"HeadInferModel({self._source}, device={self.device!r})"


class _Progress:
    """A tqdm bar over long prefills (4096 tokens or more, as the CLI), when tqdm is installed."""

    def __init__(self, total: int, min_total: int = 4096):
        self.bar = None
        if total >= min_total:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc="prefill", unit="tok")
            except ImportError:
                pass
        self.enabled = self.bar is not None

    def update(self, done: int, total: int) -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plan(source: Any, context: int | str, **options: Any) -> dict:
    """The planner's placement for a model before anything is loaded: `source` is a checkpoint
    folder (its config.json), a config dict, or a transformers config or model. Options as
    HeadInferModel's; the same dict as ``headinfer plan --json``."""
    opts = _parse_options(options)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = path
        path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    elif isinstance(source, dict):
        config, name = source, "config"
    else:
        cfg = getattr(source, "config", source)
        config, name = cfg.to_dict(), type(source).__name__
    ctx = _core.parse_count(context, "context") if isinstance(context, str) else int(context)
    gpu_mem = opts.gpu_mem if opts.gpu_mem_given else -1  # -1: the device's own budget
    return json.loads(_core.plan_json(json.dumps(config, default=str), name, opts, ctx, gpu_mem))
