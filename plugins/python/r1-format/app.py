"""`r1-format`: the DeepSeek-R1 format reward, in Python.

The same reward as `plugins/rust/r1-format` (see its header for the rule):
1.0 when a completion has the `<think>…</think>` shape, 0.0 otherwise, never
`none`. Config: `{"strict": false}`.
"""

from deepwasm_plugin import Fields, rstrip_ws, strip_ws

OPEN = "<think>"
CLOSE = "</think>"


def well_formed(prompt, completion, strict):
    """Whether `completion` (to `prompt`) has the R1 format."""
    if completion.startswith(OPEN):
        after_open = completion[len(OPEN) :]
    elif rstrip_ws(prompt).endswith(OPEN):
        after_open = completion
    else:
        return False
    if OPEN in after_open:
        return False
    close = after_open.find(CLOSE)
    if close < 0:
        return False
    if not strict:
        return True
    answer = after_open[close + len(CLOSE) :]
    return CLOSE not in answer and strip_ws(answer) != ""


class Scorer:
    def score(self, samples, config):
        cfg = Fields.parse("config", config)
        cfg.only("strict")
        strict = cfg.get_bool("strict", False)
        return [1.0 if well_formed(s.prompt, s.completion, strict) else 0.0 for s in samples]
