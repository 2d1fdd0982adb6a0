"""`{{name}}`: a deepwasm tool plugin (world `tool`), in Python.

One tool, `echo`: answers `{"text": ..., "chars": N}` with the text it was
given and its length in Unicode characters.
"""

from deepwasm_plugin import Fields, json_output, not_found, tool_spec

# The JSON Schema of the arguments; the host checks calls against it.
SCHEMA = (
    '{"type":"object","properties":{"text":{"type":"string"}},'
    '"required":["text"],"additionalProperties":false}'
)


class ToolProvider:
    def describe(self):
        return [tool_spec("echo", "Echoes a text and counts its characters.", SCHEMA)]

    def call(self, name, arguments):
        if name != "echo":
            raise not_found(f'no tool named "{name}"; this plugin has only "echo"')
        args = Fields.parse("arguments", arguments)
        args.only("text")
        text = args.require("text", args.get_str)
        return json_output({"text": text, "chars": len(text)})
