"""`{{name}}`: a deepwasm reward plugin (world `reward`), in Python.

Scores 1.0 when a completion contains the config's `needle`, 0.0 otherwise.
Config: `{"needle": "</think>"}` (the default needle).
"""

from deepwasm_plugin import Fields


class Scorer:
    def score(self, samples, config):
        # A bad config raises an error value: every sample of the batch gets it.
        cfg = Fields.parse("config", config)
        cfg.only("needle")
        needle = cfg.get_str("needle", "</think>")
        return [1.0 if needle in s.completion else 0.0 for s in samples]
