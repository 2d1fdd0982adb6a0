"""What the Python package's tests share: where the compiled plugins, the
CLI and the default model are (set by `scripts/test-python`), the CLI's
scores for comparison, and a small runner."""

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

PLUGINS = os.environ["DEEPWASM_PLUGINS"]
BIN = os.environ["DEEPWASM_BIN"]
MODEL = os.environ["DEEPWASM_MODEL"]


def plugin(name):
    """The path of a compiled plugin, e.g. `r1-format`."""
    return os.path.join(PLUGINS, name + ".wasm")


def cli_scores(reward, rows):
    """What `deepwasm score` gives for `rows` (dicts with `completion`,
    optionally `prompt`, and extra fields) with the plugin `reward`."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    try:
        out = subprocess.run(
            [BIN, "score", "--reward", plugin(reward), "--input", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return [json.loads(line)["rewards"].get(reward) for line in out.splitlines() if line.strip()]


def run(namespace):
    """Run the `test_*` functions of a script in order (or those named on
    the command line), report, and exit non-zero if any failed."""
    wanted = set(sys.argv[1:])
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and (not wanted or n in wanted)]
    failed = []
    for name, fn in tests:
        started = time.monotonic()
        try:
            fn()
        except Exception:
            failed.append(name)
            print(f"FAILED {name}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok     {name} ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"{len(tests) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
