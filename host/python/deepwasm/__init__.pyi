from typing import Any, Mapping, Optional, Sequence

__version__: str

class PluginError(Exception):
    plugin: str
    limit: Optional[str]
    def __init__(self, message: str, plugin: str, limit: Optional[str] = None) -> None: ...

class Reward:
    __name__: str
    name: str
    weight: float
    on_error: str
    def __init__(
        self,
        path: str,
        weight: float = 1.0,
        config: Any = None,
        limits: Optional[Mapping[str, int]] = None,
        on_error: str = "none",
        threads: Optional[int] = None,
        batch: int = 16,
    ) -> None: ...
    def __call__(
        self,
        completions: Sequence[Any],
        prompts: Optional[Sequence[Any]] = None,
        completion_ids: Optional[Sequence[Sequence[int]]] = None,
        **kwargs: Any,
    ) -> list[Optional[float]]: ...

class Sampler:
    name: str
    config: str
    eos_token_id: Optional[int]
    eos_token_ids: list[int]
    def __init__(
        self,
        path: str,
        config: Any = None,
        tokenizer: Optional[str] = None,
        budget_ms: int = 250,
        eos_token_id: Optional[int] = None,
    ) -> None: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def reset(self) -> None: ...
    def __call__(self, input_ids: Any, scores: Any) -> Any: ...
