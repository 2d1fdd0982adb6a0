"""The `deepwasm` Python package against the plugins the test build compiled,
without torch: rewards in TRL's shape (plain and conversational
completions, dataset columns, the same scores as `deepwasm score`, hostile
and trapping plugins contained, the GIL released while scoring, a Python
plugin), and the sampler as a logits processor over numpy scores.

Run by `scripts/test-python`, which builds and installs the wheel and sets
`DEEPWASM_PLUGINS` (compiled plugins), `DEEPWASM_BIN` (the CLI) and
`DEEPWASM_MODEL` (the default GGUF).
"""

import json
import logging
import threading
import time

import numpy as np

import deepwasm
from support import MODEL, cli_scores, plugin, run



COMPLETIONS = [
    "<think>2 + 2 is 4.</think> The answer is \\boxed{4}.",
    "The answer is \\boxed{5}.",
    "<think>hmm</think>",
    "<think>six times seven</think> \\boxed{42}",
]
ANSWERS = ["4", "4", "1", "42"]


def test_rewards_have_trls_shape_and_the_clis_scores():
    r1 = deepwasm.Reward(plugin("r1-format"))
    math = deepwasm.Reward(plugin("math-accuracy"), weight=2.0)
    assert r1.__name__ == "r1-format" and math.__name__ == "math-accuracy"
    # As TRL calls a reward: completions, prompts, the dataset's columns,
    # and keywords that are not columns (ignored).
    prompts = ["What is 2 + 2?"] * len(COMPLETIONS)
    got_r1 = r1(prompts=prompts, completions=COMPLETIONS, answer=ANSWERS, trainer_state=object())
    got_math = math(prompts=prompts, completions=COMPLETIONS, answer=ANSWERS)
    rows = [{"prompt": p, "completion": c, "answer": a} for p, c, a in zip(prompts, COMPLETIONS, ANSWERS)]
    assert got_r1 == cli_scores("r1-format", rows), got_r1
    assert got_math == [2.0 * s for s in cli_scores("math-accuracy", rows)], got_math
    assert got_math == [2.0, 0.0, 0.0, 2.0], got_math
    # Conversational completions: the assistant messages are scored.
    conv = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    conv_prompts = [[{"role": "user", "content": p}] for p in prompts]
    assert r1(conv, prompts=conv_prompts, answer=ANSWERS) == got_r1
    assert math(conv, answer=np.array(ANSWERS)) == got_math
    # The Python build of the same reward gives the same scores.
    py = deepwasm.Reward(plugin("python-r1-format"))
    assert py(COMPLETIONS) == got_r1, py(COMPLETIONS)
    assert r1([]) == []


def test_a_reward_config_and_bad_input_are_checked():
    strict = deepwasm.Reward(plugin("r1-format"), config={"strict": True})
    assert strict(["<think>x</think>", "<think>x</think> 4"]) == [0.0, 1.0]
    for bad, expect in [
        (lambda: deepwasm.Reward(plugin("no-such-plugin")), deepwasm.PluginError),
        (lambda: deepwasm.Reward(plugin("top-k")), deepwasm.PluginError),  # a sampler
        (lambda: deepwasm.Reward(plugin("r1-format"), limits={"gas": 1}), ValueError),
        (lambda: deepwasm.Reward(plugin("r1-format"), on_error="ignore"), ValueError),
        (lambda: deepwasm.Reward(plugin("r1-format"))(["a"], prompts=["x", "y"]), ValueError),
        (lambda: deepwasm.Reward(plugin("r1-format"))([42]), TypeError),
    ]:
        try:
            bad()
        except expect:
            pass
        else:
            raise AssertionError(f"expected {expect.__name__}")
    # No ground truth: the reward does not apply (None, not 0).
    math = deepwasm.Reward(plugin("math-accuracy"), on_error="raise")
    assert math(["\\boxed{4}", "\\boxed{4}"], answer=["4", None]) == [1.0, None]
    # A ground truth of the wrong type is the plugin's error, per sample.
    try:
        math(["\\boxed{4}"], answer=[["4"]])
    except deepwasm.PluginError as e:
        assert e.plugin == "math-accuracy" and "answer" in str(e), (e.plugin, str(e))
    else:
        raise AssertionError("a list as the ground truth was scored")


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_hostile_and_trapping_rewards_are_contained():
    caught = Warnings()
    logging.getLogger("deepwasm").addHandler(caught)
    hostile = deepwasm.Reward(plugin("hostile-reward"), limits={"deadline_ms": 500, "memory_mib": 64})
    started = time.monotonic()
    got = hostile(["fine", "LOOP", "TRAP", "OOM", "fine", "NAN"], hostile=["", "", "", "", "", ""])
    took = time.monotonic() - started
    # Each sample in its own instance: the hostile ones score None, the
    # others are untouched.
    assert got == [1.0, None, None, None, 1.0, None], got
    assert took < 10, took
    assert len(caught.messages) == 4 and all("hostile-reward" in m for m in caught.messages), caught.messages
    # A trigger in a dataset column, as a poisoned row would carry it.
    assert hostile(["fine", "fine"], hostile=["", "TRAP"]) == [1.0, None]
    # Raising instead names the plugin and the limit it hit.
    fuel = deepwasm.Reward(plugin("hostile-reward"), limits={"fuel": 5_000_000}, on_error="raise")
    for text, limit in [("LOOP", "fuel"), ("TRAP", None)]:
        try:
            fuel([text])
        except deepwasm.PluginError as e:
            assert e.plugin == "hostile-reward" and e.limit == limit, (text, e.plugin, e.limit, str(e))
        else:
            raise AssertionError(f"{text} scored")
    logging.getLogger("deepwasm").removeHandler(caught)


def test_scoring_releases_the_gil():
    """A Python thread keeps running while the host scores: two looping
    samples take their deadline each, and the counter moves meanwhile."""
    hostile = deepwasm.Reward(
        plugin("hostile-reward"), limits={"deadline_ms": 400, "fuel": 10**15}, threads=1
    )
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    t = threading.Thread(target=count)
    t.start()
    started = time.monotonic()
    assert hostile(["LOOP", "LOOP"]) == [None, None]
    done.set()
    t.join()
    during = [x for x in ticks if x > started + 0.1]
    # ~70 ticks when idle; a held GIL would allow none.
    assert len(during) > 10, len(during)


def test_the_sampler_edits_numpy_scores_as_the_host_decides():
    rng = np.random.default_rng(7)
    # top-k with k = 1 and temperature 0 picks the best token itself: the
    # row keeps only it, whatever the logits.
    greedy = deepwasm.Sampler(plugin("top-k"), config={"k": 1, "temperature": 0}, tokenizer=MODEL)
    for _ in range(3):
        ids = np.array([[1, 2, 3], [4, 5, 6]])
        greedy.reset()
        scores = rng.standard_normal((2, 49152)).astype(np.float32)
        best = scores.argmax(axis=1)
        out = greedy(ids, scores.copy())
        for row in range(2):
            assert np.isfinite(out[row]).sum() == 1 and out[row].argmax() == best[row], row

    # The JSON-schema sampler: random scores, its mask, the best allowed
    # token each step, until it stops: the text is valid JSON of the schema.
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    sampler = deepwasm.Sampler(plugin("json-schema"), config={"schema": schema}, tokenizer=MODEL)
    ids = [[1, 2, 3]]
    for _ in range(64):
        scores = rng.standard_normal((1, 49152)).astype(np.float32)
        out = sampler(np.array(ids), scores)
        token = int(out[0].argmax())
        if token in sampler.eos_token_ids:
            break
        ids[0].append(token)
    else:
        raise AssertionError("the sampler never stopped")
    text = sampler.decode(ids[0][3:])
    value = json.loads(text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int), text
    assert len(value["name"]) <= 6 and 0 <= value["age"] <= 99, text


def test_a_failing_or_sleeping_sampler_raises_with_its_name_in_bounded_time():
    scores = np.zeros((1, 49152), dtype=np.float32)
    for mode in ("trap-prepare", "sleep-prepare", "loop-decide", "bad-token"):
        hostile = deepwasm.Sampler(plugin("hostile-sampler"), config={"mode": mode}, tokenizer=MODEL, budget_ms=50)
        started = time.monotonic()
        try:
            for _ in range(4):
                hostile(np.array([[1, 2]]), scores.copy())
        except deepwasm.PluginError as e:
            assert e.plugin == "hostile-sampler", e.plugin
        else:
            raise AssertionError(f"{mode}: the sampler's failure went unnoticed")
        # A guest asleep in WASI is cut at its deadline like one that loops.
        assert time.monotonic() - started < 3, (mode, time.monotonic() - started)


if __name__ == "__main__":
    run(globals())
