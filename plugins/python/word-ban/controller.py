"""The `sequence` resource of the word-ban sampler (componentize-py looks
for an exported interface's resources in a module named after the interface)."""

import app
from deepwasm_plugin import defer, deny, sample


class Sequence:
    @classmethod
    def open(cls, config, prompt, params):
        words = app.read_words(config)
        return cls(app.index(), app.ban(words) if words else None)

    def __init__(self, index, ban):
        self.index = index
        self.ban = ban
        self.tail = b""

    def prepare(self, step, new_tokens):
        if self.ban is None:
            return defer()
        ix = self.index
        tail = self.tail
        for t in new_tokens:
            if ix.special.contains(t):
                tail = b""
            else:
                tail += ix.token(t)
        keep = self.ban.keep
        self.tail = tail[len(tail) - keep :] if len(tail) > keep else tail
        d = self.ban.deny(self.tail)
        return defer() if d.is_empty() else deny(d)

    def decide(self, step, logits):
        # `prepare` always decides; a host that calls this anyway gets a defer.
        return sample()
