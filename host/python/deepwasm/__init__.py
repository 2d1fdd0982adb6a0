"""deepwasm from Python: sandboxed, deterministic, fuel-metered Wasm plugins
in the trainers and generation loops people already use.

- :class:`Reward` is a reward function with TRL's shape
  (``reward(completions, prompts=None, completion_ids=None, **kwargs)``),
  for ``GRPOTrainer(reward_funcs=[...])`` and other trainers' hooks.
- :class:`Sampler` is a ``transformers`` logits processor steering
  ``model.generate`` with a sampler plugin.

Both run the plugin files the ``deepwasm`` CLI and server run, under the
same limits, through the same host (a native module, not a rewrite).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping, Optional, Sequence

from . import _native

__all__ = ["PluginError", "Reward", "Sampler", "__version__"]
__version__ = _native.__version__

log = logging.getLogger("deepwasm")


class PluginError(Exception):
    """A plugin failed: it could not be loaded, trapped, returned an error,
    or ran into one of its limits.

    ``plugin`` names the plugin; ``limit`` names the limit it hit
    (``"fuel"``, ``"deadline"``, ``"memory"``, ``"stack"``,
    ``"table_elements"``, ``"instances"`` or ``"throttled"``), or is
    ``None``.
    """

    def __init__(self, message: str, plugin: str, limit: Optional[str] = None):
        super().__init__(message)
        self.plugin = plugin
        self.limit = limit


def _text(value: Any, what: str, index: int) -> str:
    """A completion or prompt as text: a string, or a conversation (a list
    of ``{"role", "content"}`` messages). A completion's conversation is its
    assistant messages' contents; a prompt's is every message's, one per
    line."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, Sequence):
        parts = []
        for message in value:
            if not isinstance(message, Mapping) or "content" not in message:
                raise TypeError(f"{what}[{index}]: a conversation is a list of {{'role', 'content'}} messages")
            if what == "completions" and message.get("role", "assistant") != "assistant":
                continue
            content = message["content"]
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
            parts.append("" if content is None else str(content))
        return "".join(parts) if what == "completions" else "\n".join(parts)
    raise TypeError(f"{what}[{index}] must be a string or a list of messages, not {type(value).__name__}")


def _json_safe(value: Any) -> Any:
    """A dataset value as JSON (numpy and torch scalars included)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class Reward:
    """A Wasm reward plugin as a reward function.

    ``Reward("r1-format.wasm")`` loads (and compiles, cached under
    ``$DEEPWASM_CACHE/components``) the plugin. Calling it scores a batch:

    >>> reward(completions, prompts=prompts, answer=answers)  # doctest: +SKIP
    [1.0, 0.0, None]

    - ``completions`` are strings, or conversations (lists of messages: the
      assistant messages' text is scored).
    - ``prompts`` likewise (optional); ``completion_ids`` the tokens
      (optional).
    - Every other keyword that is a list with one entry per completion (the
      dataset's extra columns, such as ``answer``) reaches the plugin as its
      sample's ``extra`` JSON; other keywords (``trainer_state``, say) are
      ignored.
    - ``None`` where the plugin says the reward does not apply, or where it
      failed and ``on_error="none"`` (the default: a warning is logged and
      training goes on). ``on_error="raise"`` raises :class:`PluginError`.

    Scores are multiplied by ``weight``. ``config`` is the plugin's JSON
    config (a dict or a JSON string). ``limits`` narrows the reward world's
    defaults: ``{"fuel": ..., "memory_mib": ..., "deadline_ms": ...}``.
    Samples are scored in parallel on ``threads`` threads (default: every
    core) with the GIL released, ``batch`` at a time per thread; each sample
    runs in a fresh instance, so scores do not depend on the batching.

    ``__name__`` is the plugin's name (its file name without ``.wasm``), so
    trainers log ``rewards/<name>``.
    """

    def __init__(
        self,
        path: str,
        weight: float = 1.0,
        config: Any = None,
        limits: Optional[Mapping[str, int]] = None,
        on_error: str = "none",
        threads: Optional[int] = None,
        batch: int = 16,
    ):
        if on_error not in ("none", "raise"):
            raise ValueError('on_error is "none" or "raise"')
        if not math.isfinite(float(weight)):
            raise ValueError("weight must be a finite number")
        config = "{}" if config is None else config if isinstance(config, str) else json.dumps(config)
        unknown = set(limits or ()) - {"fuel", "memory_mib", "deadline_ms"}
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}: the limits are fuel, memory_mib and deadline_ms")
        try:
            self._host = _native.RewardHost(str(path), config, dict(limits) if limits else None)
        except ValueError as e:
            raise PluginError(str(e), plugin=str(path)) from None
        self.weight = float(weight)
        self.on_error = on_error
        self.threads = threads
        self.batch = batch
        self.__name__ = self._host.name
        self.name = self._host.name

    def __repr__(self) -> str:
        return f"deepwasm.Reward({self.name!r}, weight={self.weight})"

    def __call__(
        self,
        completions: Sequence[Any],
        prompts: Optional[Sequence[Any]] = None,
        completion_ids: Optional[Sequence[Sequence[int]]] = None,
        **kwargs: Any,
    ) -> list:
        n = len(completions)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        if completion_ids is not None and len(completion_ids) != n:
            raise ValueError(f"{len(completion_ids)} completion_ids for {n} completions")
        # The dataset's extra columns: one entry per completion.
        columns = {
            k: v
            for k, v in kwargs.items()
            if (isinstance(v, (list, tuple)) or hasattr(v, "tolist")) and hasattr(v, "__len__") and len(v) == n
        }
        samples = []
        for i, completion in enumerate(completions):
            extra = json.dumps({k: _json_safe(v[i]) for k, v in columns.items()})
            ids = [] if completion_ids is None else [int(t) for t in completion_ids[i]]
            prompt = "" if prompts is None else _text(prompts[i], "prompts", i)
            samples.append((prompt, _text(completion, "completions", i), ids, extra))
        scored = self._host.score(samples, self.threads, self.batch)
        out = []
        for i, (score, error, limit) in enumerate(scored):
            if error is not None:
                if self.on_error == "raise":
                    raise PluginError(f"sample {i}: {error}", plugin=self.name, limit=limit)
                log.warning("reward %s: sample %d scored None: %s", self.name, i, error)
                out.append(None)
            else:
                out.append(None if score is None else score * self.weight)
        return out


class Sampler:
    """A Wasm sampler plugin as a ``transformers`` logits processor:

    >>> model.generate(**inputs, logits_processor=[Sampler("json-schema.wasm",
    ...     config={"schema": schema}, tokenizer="model.gguf")])  # doctest: +SKIP

    ``tokenizer`` is the model the plugin steers, for the plugin's
    ``tokenizer`` imports: a GGUF file or a Hugging Face directory (read
    without its weights), or a ``tokenizer.json``. ``config`` is the
    plugin's JSON config, the same for every row.

    Each row of a batch gets a sequence of its own (the plugin sees its
    prompt, then the tokens appended at each step). The plugin's decisions
    become edits of the row's scores:

    - a mask (``allow``/``deny``) and biases are applied by the host's own
      code (masked tokens get ``-inf``);
    - ``pick`` and ``force`` keep only that token (a forced run of several
      tokens takes one step each, without calling the plugin);
    - ``stop`` keeps only the end-of-sequence token (``eos_token_id``, by
      default the tokenizer's).

    Not expressible as an edit of the scores, and so ignored: a decision's
    sampling-parameter overrides (temperature, top-k, top-p, penalties,
    seed). Use ``generate``'s own parameters for those. Each step's calls are
    held to ``budget_ms``; a plugin that fails a row raises
    :class:`PluginError`.

    Scores may be torch tensors or numpy arrays, with one row per sequence.
    The processor keeps per-row state across calls and starts over when it
    sees a new generation (fewer tokens than the last call, or a new batch
    size).
    """

    def __init__(
        self,
        path: str,
        config: Any = None,
        tokenizer: Optional[str] = None,
        budget_ms: int = 250,
        eos_token_id: Optional[int] = None,
    ):
        if tokenizer is None:
            raise ValueError("Sampler needs tokenizer=: the model file or directory (or tokenizer.json)")
        try:
            self._host = _native.SamplerHost(str(path), str(tokenizer), budget_ms)
        except ValueError as e:
            raise PluginError(str(e), plugin=str(path)) from None
        self.config = "{}" if config is None else config if isinstance(config, str) else json.dumps(config)
        self.name = self._host.name
        eos = self._host.eos_token_ids
        self.eos_token_ids = [eos_token_id] if eos_token_id is not None else list(eos)
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        self._rows: list = []
        self._seen = 0

    def __repr__(self) -> str:
        return f"deepwasm.Sampler({self.name!r})"

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, as the plugin's tokenizer reads them."""
        return self._host.decode([int(t) for t in ids])

    def reset(self) -> None:
        """Forget every row's state (a new generation starts)."""
        self._rows = []
        self._seen = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        ids = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(r) for r in input_ids]
        if len(ids) != len(self._rows) or (ids and len(ids[0]) < self._seen):
            self.reset()
            self._rows = [None] * len(ids)
        for i, row_ids in enumerate(ids):
            self._step_row(i, row_ids, scores)
        self._seen = len(ids[0]) if ids else 0
        return scores

    def _step_row(self, i: int, row_ids: list, scores: Any) -> None:
        row = self._rows[i]
        if row is None:
            seq = self._host.open(self.config, row_ids)
            row = self._rows[i] = {"seq": seq, "seen": len(row_ids), "step": 0, "queue": [], "done": False, "pending": []}
        new = row_ids[row["seen"]:]
        row["seen"] = len(row_ids)
        if row["done"]:
            self._keep_only(scores, i, self.eos_token_id)
            return
        row["pending"].extend(new)
        if row["queue"]:
            self._keep_only(scores, i, row["queue"].pop(0))
            return
        logits = _row_bytes(scores, i)
        try:
            kind, payload = row["seq"].step(row["step"], row["pending"], logits)
        except RuntimeError as e:
            raise PluginError(f"row {i}: {e}", plugin=self.name) from None
        row["step"] += 1
        row["pending"] = []
        if kind == "force":
            row["queue"] = list(payload[1:])
            self._keep_only(scores, i, payload[0])
        elif kind == "stop":
            row["done"] = True
            self._keep_only(scores, i, self.eos_token_id)
        else:
            _set_row(scores, i, payload)

    @staticmethod
    def _keep_only(scores: Any, i: int, token: Optional[int]) -> None:
        if token is None:
            raise PluginError("the plugin stopped a row, but no end-of-sequence token is known: pass eos_token_id=", plugin="sampler")
        scores[i, :] = -math.inf
        scores[i, token] = 0.0


def _row_bytes(scores: Any, i: int) -> bytes:
    row = scores[i]
    if hasattr(row, "detach"):  # torch
        import torch

        return row.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy().tobytes()
    import numpy as np

    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def _set_row(scores: Any, i: int, data: bytes) -> None:
    import numpy as np

    values = np.frombuffer(data, dtype="<f4")
    if hasattr(scores, "detach"):  # torch
        import torch

        scores[i] = torch.from_numpy(values.copy()).to(dtype=scores.dtype, device=scores.device)
    else:
        scores[i] = values.astype(scores.dtype, copy=False)
