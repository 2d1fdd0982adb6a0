"""Reference prompts for deepwasm's chat templates, rendered by Python jinja2.

The environment is the one Hugging Face transformers builds in
`apply_chat_template`: an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the loopcontrols extension, transformers' own `tojson`
(json.dumps with ensure_ascii=False), its `{% generation %}` block, and the
`raise_exception` and `strftime_now` globals. Templates are read from the
real model files.

Usage: chat_goldens.py MODELS_DIR GOLDENS_DIR

Writes GOLDENS_DIR/<case>.txt, the exact prompt of each case, and
GOLDENS_DIR/conversations.json, the cases themselves, which the Rust tests
render again and compare byte for byte.
"""

import json
import os
import struct
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


# --------------------------------------------------------------------------
# The environment, as transformers configures it.


class AssistantTracker(jinja2.ext.Extension):
    """transformers' `{% generation %}` block, which marks assistant text for
    training masks; for a prompt it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# --------------------------------------------------------------------------
# Where templates come from.


def read_gguf_metadata(path):
    """The key/value metadata of a GGUF file (versions 2 and 3)."""
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:

        def read(fmt):
            fmt = "<" + fmt
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def read_str():
            return f.read(read("Q")).decode("utf-8")

        def read_value(kind):
            if kind == 8:
                return read_str()
            if kind == 9:
                item_kind, count = read("I"), read("Q")
                return [read_value(item_kind) for _ in range(count)]
            return read(scalars[kind])

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = read("I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        read("Q")  # tensor count
        metadata = {}
        for _ in range(read("Q")):
            key = read_str()
            metadata[key] = read_value(read("I"))
        return metadata


def load_template(spec, models, goldens):
    """(template source, bos_token, eos_token) as apply_chat_template sees them."""
    kind = spec["kind"]
    if kind == "tokenizer_config":
        with open(os.path.join(models, spec["path"]), encoding="utf-8") as f:
            config = json.load(f)

        def token(key):
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        source = config["chat_template"]
        if isinstance(source, list):
            source = {t["name"]: t["template"] for t in source}["default"]
        return source, token("bos_token"), token("eos_token")
    if kind == "gguf":
        meta = read_gguf_metadata(os.path.join(models, spec["path"]))
        tokens = meta["tokenizer.ggml.tokens"]

        def token(key):
            return tokens[meta[key]] if key in meta else None

        return (
            meta["tokenizer.chat_template"],
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        )
    if kind == "file":
        with open(os.path.join(goldens, spec["path"]), encoding="utf-8") as f:
            return f.read(), spec.get("bos_token"), spec.get("eos_token")
    raise ValueError(f"unknown template kind {kind}")


# --------------------------------------------------------------------------
# Conversations: deepwasm's ChatMessage/ToolSpec shapes, turned into the
# dicts a Hugging Face caller passes.


def hf_message(message, arguments):
    out = {"role": message["role"], "content": message.get("content")}
    if message.get("reasoning_content") is not None:
        out["reasoning_content"] = message["reasoning_content"]
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"] if arguments == "text" else json.loads(call["arguments"]),
                },
            }
            for call in message["tool_calls"]
        ]
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def hf_tool(tool):
    return {
        "type": "function",
        "function": {"name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]},
    }


def render(env, source, bos, eos, case):
    context = {}
    if bos is not None:
        context["bos_token"] = bos
    if eos is not None:
        context["eos_token"] = eos
    context.update(case.get("variables", {}))
    tools = [hf_tool(t) for t in case.get("tools", [])]
    return env.from_string(source).render(
        messages=[hf_message(m, case["tool_arguments"]) for m in case["messages"]],
        tools=tools or None,
        documents=None,
        add_generation_prompt=case["add_generation_prompt"],
        **context,
    )


# --------------------------------------------------------------------------
# The cases.


def user(text):
    return {"role": "user", "content": text}


def system(text):
    return {"role": "system", "content": text}


def assistant(text, reasoning=None):
    m = {"role": "assistant", "content": text}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    return m


def calls(content, *tool_calls):
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"id": i, "name": n, "arguments": a} for (i, n, a) in tool_calls],
    }


def tool(call_id, text, name=None):
    m = {"role": "tool", "content": text, "tool_call_id": call_id}
    if name is not None:
        m["name"] = name
    return m


WEATHER = {
    "name": "get_weather",
    "description": "Current weather at a place.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Zürich"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}
CONVERT = {
    "name": "convert_units",
    "description": "Convert a quantity between units.",
    "parameters": {
        "type": "object",
        "properties": {"value": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
        "required": ["value", "from", "to"],
    },
}

UNICODE_USER = "¿Qué tal? 你好，世界！ Привет 👋🏽 مرحبا e\u0301 zero\u200bwidth \"quotes\" 'single' back\\slash\ttab"

TEMPLATES = {
    "deepseek-r1": {"kind": "tokenizer_config", "path": "deepseek-r1-tokenizer/tokenizer_config.json"},
    "smollm2": {"kind": "gguf", "path": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "qwen3": {"kind": "tokenizer_config", "path": "qwen3-tokenizer/tokenizer_config.json"},
    "compat": {"kind": "file", "path": "compat.jinja", "bos_token": "<s>", "eos_token": "</s>"},
}

CASES = [
    {
        "name": "deepseek-r1-system",
        "template": "deepseek-r1",
        "messages": [system("You are a helpful assistant."), user("What is 2 + 2?")],
        "add_generation_prompt": True,
    },
    {
        "name": "deepseek-r1-multi-turn",
        "template": "deepseek-r1",
        "messages": [
            system("You are a careful mathematician."),
            system("Answer briefly."),
            user("What is 17 * 3?"),
            assistant("<think>\n17 * 3 = 51, since 17 * 3 = 30 + 21.\n</think>\n\n17 * 3 = 51."),
            user("And 51 / 3?"),
            assistant("51 / 3 = 17."),
            user("Now add them."),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "deepseek-r1-tools",
        "template": "deepseek-r1",
        "tools": [WEATHER, CONVERT],
        "messages": [
            system("You can call tools."),
            user("What's the weather in Paris and in Zürich?"),
            calls(
                None,
                ("call_1", "get_weather", '{"city": "Paris"}'),
                ("call_2", "get_weather", '{"city": "Zürich", "unit": "celsius"}'),
            ),
            tool("call_1", '{"temperature": 18, "sky": "cloudy"}'),
            tool("call_2", '{"temperature": 12, "sky": "clear"}'),
            assistant("<think>\nBoth results are in.\n</think>\n\nParis: 18 °C, cloudy. Zürich: 12 °C, clear."),
            user("Convert 18 °C to Fahrenheit."),
            calls("Converting.", ("call_3", "convert_units", '{"value": 18, "from": "C", "to": "F"}')),
            tool("call_3", "64.4"),
            assistant("18 °C is 64.4 °F."),
            user("Thanks!"),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "deepseek-r1-tool-result-last",
        "template": "deepseek-r1",
        "tools": [WEATHER],
        "messages": [
            user("Weather in Oslo?"),
            calls(None, ("call_1", "get_weather", '{"city": "Oslo"}')),
            tool("call_1", '{"temperature": -3}'),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "deepseek-r1-unicode",
        "template": "deepseek-r1",
        "tools": [WEATHER],
        "messages": [
            system("Réponds en français — avec des émojis 🎉."),
            user(UNICODE_USER),
            assistant("<think>\n用户在打招呼。\n</think>\n\n你好！😊 Ça va bien."),
            user("Météo à Zürich ? 🌦️"),
            calls("", ("call_ü", "get_weather", '{"city": "Zürich", "note": "naïve café ☕"}')),
            tool("call_ü", '{"température": "12 °C", "ciel": "nuageux ☁️"}'),
            assistant("Il fait 12 °C à Zürich, ciel nuageux ☁️."),
        ],
        "add_generation_prompt": False,
    },
    {
        "name": "smollm2-default-system",
        "template": "smollm2",
        "messages": [user("Hi! Who are you?")],
        "add_generation_prompt": True,
    },
    {
        "name": "smollm2-multi-turn",
        "template": "smollm2",
        "messages": [
            system("You are a terse assistant."),
            user("Name a prime number."),
            assistant("7"),
            user(UNICODE_USER),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "smollm2-no-generation-prompt",
        "template": "smollm2",
        "messages": [user("Say hi."), assistant("Hi! 👋")],
        "add_generation_prompt": False,
    },
    {
        "name": "qwen3-tools",
        "template": "qwen3",
        "tools": [WEATHER, CONVERT],
        "messages": [
            system("You are Qwen, a helpful assistant."),
            user("Weather in Paris and Zürich, in Fahrenheit?"),
            calls(
                "",
                ("call_1", "get_weather", '{"city": "Paris", "unit": "fahrenheit"}'),
                ("call_2", "get_weather", '{"city": "Zürich", "unit": "fahrenheit"}'),
            ),
            tool("call_1", '{"temperature": 64}'),
            tool("call_2", '{"temperature": 54}'),
            assistant("Paris: 64 °F. Zürich: 54 °F."),
            user("And convert 64 °F to Celsius."),
            calls("Let me convert that.", ("call_3", "convert_units", '{"value": 64, "from": "F", "to": "C"}')),
            tool("call_3", "17.8"),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "qwen3-reasoning",
        "template": "qwen3",
        "messages": [
            user("What is 6 * 7?"),
            assistant("6 * 7 = 42.", reasoning="Six sevens are forty-two."),
            user("And 6 * 8?"),
            assistant("<think>\nOne more six: 42 + 6 = 48.\n</think>\n\n6 * 8 = 48."),
            user("Thanks — 谢谢!"),
        ],
        "add_generation_prompt": True,
    },
    {
        "name": "qwen3-no-thinking",
        "template": "qwen3",
        "messages": [user("Just answer: capital of France?")],
        "add_generation_prompt": True,
        "variables": {"enable_thinking": False},
    },
    {
        "name": "compat",
        "template": "compat",
        "tools": [WEATHER],
        "messages": [
            system("  System text with spaces.  "),
            user("Hello,  world!  How are you?"),
            calls(None, ("call_1", "get_weather", '{"city": "Zürich", "days": [1, 2.5, 1e-07], "ok": true, "none": null}')),
            tool("call_1", "Sunny ☀️", name="get_weather"),
            assistant("<think>\nhmm\n</think>\n\nIt is sunny.", reasoning="hidden"),
            user("Bye"),
        ],
        "add_generation_prompt": True,
        "variables": {
            "data": {
                "text": "quote\" backslash\\ newline\n tab\t ctrl\u0001 del\u007f é 😀 <tag> & 'apos' \u2028",
                "ints": [0, -1, 12345678901234567890],
                "floats": [1.5, 2.0, -0.25, 1e-07, 1e16, 123456.789],
                "nested": {"b": [], "a": {}, "c": [{"x": None, "y": True}]},
            },
            "words": "  The quick  brown fox  ",
        },
    },
]

# How each template wants tool-call arguments (see ToolArguments in chat.rs):
# DeepSeek concatenates the JSON text, Qwen 3 prints text as is, and the
# compat template pipes the object through tojson.
ARGUMENTS = {"deepseek-r1": "text", "smollm2": "text", "qwen3": "text", "compat": "object"}


def main():
    models, goldens = sys.argv[1], sys.argv[2]
    env = make_environment()
    loaded = {name: load_template(spec, models, goldens) for name, spec in TEMPLATES.items()}
    cases = []
    for case in CASES:
        case = {"tool_arguments": ARGUMENTS[case["template"]], "tools": [], "variables": {}, **case}
        source, bos, eos = loaded[case["template"]]
        prompt = render(env, source, bos, eos, case)
        with open(os.path.join(goldens, case["name"] + ".txt"), "w", encoding="utf-8", newline="") as f:
            f.write(prompt)
        cases.append(case)
    doc = {
        "generator": "scripts/reference/chat-goldens (Python jinja2 %s)" % jinja2.__version__,
        "templates": TEMPLATES,
        "cases": cases,
    }
    with open(os.path.join(goldens, "conversations.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {len(cases)} goldens to {goldens}")


if __name__ == "__main__":
    main()
