"""generate()'s transformers-style arguments: validation, defaults, and the output types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# transformers generate() arguments that mean nothing else for one sequence: accepted with these values.
_INERT = {"pad_token_id": None, "use_cache": True, "num_beams": 1, "num_return_sequences": 1}


@dataclass
class GenerateOutput:
    """What generate(return_dict_in_generate=True) returns when transformers is not installed
    (with it: transformers' GenerateDecoderOnlyOutput): sequences [1, prompt + new] and, with
    output_logits=True, logits: a tuple of [1, vocab] float32 arrays, one per new token."""
    sequences: Any
    logits: Optional[tuple] = None
    scores: Optional[tuple] = None


@dataclass
class _Args:
    prompt: list
    n_prompt: int
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    eos_ids: Optional[list]
    torch_device: Any  # the input's torch device; None for numpy input
    prompt_array: np.ndarray  # int64 [1, n]

    @property
    def prompt_for_streamer(self):
        return self._as_output(self.prompt_array, cpu=True)

    def token_for_streamer(self, token: int):
        return self._as_output(np.array([token], dtype=np.int64), cpu=True)

    def _as_output(self, a: np.ndarray, cpu: bool = False):
        if self.torch_device is None:
            return a
        import torch
        t = torch.from_numpy(a)
        return t if cpu else t.to(self.torch_device)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D [batch, tokens] as a tokenizer's return_tensors gives it; "
                         f"got shape {list(a.shape)}")
    return a


def _positive_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _draw_seed() -> int:
    try:
        import torch
        return int(torch.randint(0, 2**62, (1,)).item())
    except ImportError:
        return int(np.random.randint(0, 2**62, dtype=np.int64))


def resolve_generate_args(model, input_ids, attention_mask, max_length, max_new_tokens, do_sample, temperature,
                          top_k, top_p, eos_token_id, seed, kwargs) -> _Args:
    for key, value in kwargs.items():
        if key not in _INERT:
            raise ValueError(f"generate(): `{key}` is not supported by HeadInferModel (it takes max_length, "
                             "max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, attention_mask, "
                             "streamer, output_logits, return_dict_in_generate, seed)")
        if key != "pad_token_id" and value != _INERT[key]:
            raise ValueError(f"generate(): `{key}={value!r}` is not supported (only {_INERT[key]!r})")
    if input_ids is None:
        raise ValueError("generate() needs input_ids (the prompt's token ids, [1, tokens])")
    torch_device = input_ids.device if _is_torch(input_ids) else None
    ids = _as_numpy(input_ids, "input_ids")
    if ids.shape[0] != 1:
        raise ValueError(f"input_ids has a batch of {ids.shape[0]} sequences; HeadInferModel generates one at a "
                         "time (batch size 1)")
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one token")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must hold integer token ids, not {ids.dtype}")
    if attention_mask is not None:
        mask = _as_numpy(attention_mask, "attention_mask")
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}")
        if not np.all(mask == 1):
            raise ValueError("attention_mask has zeros: HeadInferModel attends the whole prompt (padding and "
                             "masked tokens are not supported); pass the unpadded prompt")
    n_prompt = int(ids.shape[1])
    d = model._defaults
    if max_new_tokens is not None:  # as transformers: max_new_tokens wins over max_length
        new = _positive_int(max_new_tokens, "max_new_tokens", 1)
    else:
        if max_length is None and d.max_length is None:  # transformers: 20 new tokens, within the positions
            limit = n_prompt + 20
            if model._checkpoint.max_position_embeddings > 0:
                limit = min(limit, model._checkpoint.max_position_embeddings)
        else:
            limit = _positive_int(max_length if max_length is not None else d.max_length, "max_length", 1)
        if n_prompt >= limit:
            raise ValueError(f"Input length of input_ids is {n_prompt}, but `max_length` is set to {limit}. "
                             "Increase `max_length` or, better yet, set `max_new_tokens`.")
        new = limit - n_prompt
    sample = d.do_sample if do_sample is None else bool(do_sample)
    t, k, p = 0.0, 0, 1.0
    if sample:
        t = float(d.temperature if temperature is None else temperature)
        if not t > 0.0:
            raise ValueError(f"`temperature` (={t}) has to be a strictly positive float when do_sample=True")
        k = d.top_k if top_k is None else top_k
        k = 0 if k is None else _positive_int(k, "top_k", 0)
        p = float(d.top_p if top_p is None else top_p)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"`top_p` has to be a float in (0, 1], got {p}")
    if seed is None:
        seed = _draw_seed()
    seed = _positive_int(seed, "seed", 0)
    eos = None
    if eos_token_id is not None:
        eos = [int(eos_token_id)] if np.ndim(eos_token_id) == 0 else [int(e) for e in eos_token_id]
        for e in eos:
            if not 0 <= e < model.vocab_size:
                raise ValueError(f"eos_token_id {e} is outside the vocabulary ({model.vocab_size} tokens)")
    prompt_array = ids.astype(np.int64, copy=False)
    return _Args(prompt=prompt_array[0].tolist(), n_prompt=n_prompt, max_new_tokens=new, temperature=t, top_k=k,
                 top_p=p, seed=seed, eos_ids=eos, torch_device=torch_device, prompt_array=prompt_array)


def to_output(a: _Args, tokens: list, logits: Optional[np.ndarray], return_dict: bool, want_logits: bool):
    sequences = a._as_output(np.concatenate([a.prompt_array, np.asarray([tokens], dtype=np.int64)], axis=1))
    if not return_dict:
        return sequences
    logit_rows = None
    if want_logits:
        logit_rows = tuple(a._as_output(np.ascontiguousarray(logits[i:i + 1])) for i in range(logits.shape[0]))
    try:
        from transformers.generation.utils import GenerateDecoderOnlyOutput
        return GenerateDecoderOnlyOutput(sequences=sequences, logits=logit_rows)
    except ImportError:
        return GenerateOutput(sequences=sequences, logits=logit_rows)
