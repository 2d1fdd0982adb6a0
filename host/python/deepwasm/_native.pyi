"""The native host behind the `deepwasm` package (see its docstrings)."""

from typing import Mapping, Optional, Sequence, Tuple

__version__: str

class RewardHost:
    """A reward plugin loaded under the reward world's limits, narrowed by
    `limits` (`fuel`, `memory_mib`, `deadline_ms`)."""

    name: str
    def __init__(self, path: str, config: str = "{}", limits: Optional[Mapping[str, int]] = None) -> None: ...
    def score(
        self,
        samples: Sequence[Tuple[str, str, Sequence[int], str]],
        threads: Optional[int] = None,
        batch: int = 16,
    ) -> list[Tuple[Optional[float], Optional[str], Optional[str]]]:
        """Score (prompt, completion, completion ids, extra JSON) samples in
        parallel, the GIL released: per sample (score or None, error or None,
        limit hit or None)."""

class SamplerHost:
    """A sampler plugin with the tokenizer of the model it steers (a GGUF
    file, a Hugging Face directory, or a tokenizer.json)."""

    name: str
    vocab_size: int
    eos_token_ids: list[int]
    def __init__(self, path: str, tokenizer: str, budget_ms: int = 250) -> None: ...
    def open(self, config: str, prompt: Sequence[int]) -> SamplerRow: ...
    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, as the plugin's tokenizer reads them."""

class SamplerRow:
    """One sequence's sampler."""

    def step(self, step: int, new_tokens: Sequence[int], logits: bytes) -> Tuple[str, object]:
        """("force", [ids]), ("stop", None) or ("scores", float32 bytes of the
        masked and biased row). Raises RuntimeError when the plugin fails."""
