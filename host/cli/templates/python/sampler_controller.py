"""The `sequence` resource of `{{name}}`: one generated sequence."""

from deepwasm_plugin import Fields
from wit_world.exports.controller import (
    Decision_Pick,
    Decision_Stop,
    Prepared_Decided,
    Prepared_NeedLogits,
)


class Sequence:
    @classmethod
    def open(cls, config, prompt, params):
        cfg = Fields.parse("config", config)
        cfg.only("max_steps")
        return cls(cfg.get_int("max_steps"))

    def __init__(self, max_steps):
        self.max_steps = max_steps

    def prepare(self, step, new_tokens):
        """Runs while the model computes the step's logits: decide here what needs no logits."""
        if self.max_steps is not None and step >= self.max_steps:
            return Prepared_Decided(Decision_Stop())
        return Prepared_NeedLogits()

    def decide(self, step, logits):
        """The logits stay in the host; ask for what you need."""
        return Decision_Pick(logits.argmax().token)
