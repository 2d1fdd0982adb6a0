"""`{{name}}`: a deepwasm sampler plugin (world `sampler`), in Python.

Picks the most likely token at every step (greedy decoding) and ends the
sequence after `max_steps` tokens when the config sets it. Config:
`{"max_steps": 64}` (default: no limit). The sequence resource is in
`controller.py`: componentize-py looks for the resources of an exported
interface in a module named after the interface.
"""


class Controller:
    def setup(self):
        """Called once per instance before any sequence: build indexes here."""
