"""`{{name}}`: a deepwasm agent plugin (world `agent`), in Python.

Asks the served model the task once, through its chat template, and answers
with the reply. Config: `{"max_tokens": 256}` (the default). From here, offer
the granted tools (`tools.available()`) in the options and loop over the
model's tool calls.
"""

from deepwasm_plugin import Fields
from wit_world.imports import inference, types


class Runner:
    def run(self, task, config):
        cfg = Fields.parse("config", config)
        cfg.only("max_tokens")
        max_tokens = cfg.get_int("max_tokens", 256)
        question = types.Message(
            role=types.Role.USER,
            content=task,
            reasoning=None,
            tool_calls=[],
            tool_call_id=None,
            name=None,
        )
        options = inference.GenerateOptions(
            # `None` keeps what the request asked for.
            params=types.SamplingParams(None, None, None, None, None, None, None, None),
            max_tokens=max_tokens,
            stop=[],
            tools=[],
            tool_choice=inference.ToolChoice_Auto(),
            sampler=None,
        )
        # The host's error (a budget ran out, say) is raised, and becomes this run's error.
        reply = inference.chat([question], options)
        return reply.message.content
