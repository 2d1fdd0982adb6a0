// Greedy decoding with llama.cpp, for golden files.
//
// Usage: greedy MODEL.gguf N_TOKENS < prompt
//
// The prompt is read from stdin byte for byte (so trailing whitespace and
// "\r\n" survive), tokenized with special tokens recognised in the text and
// BOS added only if the model asks for it, then N_TOKENS tokens are decoded by
// argmax over the logits (the lowest id wins a tie). Generation does not stop
// at end-of-generation tokens: every step is recorded so that another
// implementation can be compared step by step; `first_eog` gives the index of
// the first one, or null.
//
// Attention runs without flash attention and with an f32 KV cache, so the
// reference rounds as little as llama.cpp can; `margins` gives, per step,
// the gap between the best and second-best logit, so a comparison can tell a
// real divergence from a near-tie that any rounding may flip.
//
// Prints one JSON object:
// {"prompt_ids": [...], "ids": [...], "margins": [...], "first_eog": k}.

#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

static void print_ids(const char * name, const std::vector<llama_token> & ids) {
    std::printf("\"%s\": [", name);
    for (size_t i = 0; i < ids.size(); i++) {
        std::printf(i == 0 ? "%d" : ", %d", ids[i]);
    }
    std::printf("]");
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf N_TOKENS < prompt\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    const int n_predict = std::atoi(argv[2]);
    if (n_predict <= 0) {
        std::fprintf(stderr, "N_TOKENS must be positive\n");
        return 2;
    }

    std::string prompt((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mparams);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", model_path);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    // add_special=true adds BOS only when the model's metadata asks for it.
    const int n_prompt = -llama_tokenize(vocab, prompt.data(), (int32_t) prompt.size(), nullptr, 0, true, true);
    std::vector<llama_token> prompt_ids(n_prompt);
    if (llama_tokenize(vocab, prompt.data(), (int32_t) prompt.size(), prompt_ids.data(), n_prompt, true, true) !=
        n_prompt) {
        std::fprintf(stderr, "tokenization failed\n");
        return 1;
    }
    if (prompt_ids.empty()) {
        std::fprintf(stderr, "the prompt has no tokens\n");
        return 1;
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t) (n_prompt + n_predict + 8);
    cparams.n_batch = (uint32_t) n_prompt;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    cparams.no_perf = true;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cparams.type_k = GGML_TYPE_F32;
    cparams.type_v = GGML_TYPE_F32;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        std::fprintf(stderr, "cannot create a context\n");
        return 1;
    }

    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> ids;
    std::vector<float> margins;
    int first_eog = -1;
    std::vector<llama_token> pending = prompt_ids;
    for (int step = 0; step < n_predict; step++) {
        llama_batch batch = llama_batch_get_one(pending.data(), (int32_t) pending.size());
        if (llama_decode(ctx, batch) != 0) {
            std::fprintf(stderr, "llama_decode failed at step %d\n", step);
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) {
            if (logits[t] > logits[best]) {
                best = t;
            }
        }
        float second = -INFINITY;
        for (llama_token t = 0; t < n_vocab; t++) {
            if (t != best && logits[t] > second) {
                second = logits[t];
            }
        }
        margins.push_back(logits[best] - second);
        if (first_eog < 0 && llama_vocab_is_eog(vocab, best)) {
            first_eog = step;
        }
        ids.push_back(best);
        pending.assign(1, best);
    }

    std::printf("{");
    print_ids("prompt_ids", prompt_ids);
    std::printf(", ");
    print_ids("ids", ids);
    std::printf(", \"margins\": [");
    for (size_t i = 0; i < margins.size(); i++) {
        std::printf(i == 0 ? "%.6g" : ", %.6g", margins[i]);
    }
    std::printf("]");
    if (first_eog < 0) {
        std::printf(", \"first_eog\": null}\n");
    } else {
        std::printf(", \"first_eog\": %d}\n", first_eog);
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
