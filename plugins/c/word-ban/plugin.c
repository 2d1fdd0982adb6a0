/*
 * `word-ban`: a sampler that keeps banned words out of the generated text, in C.
 *
 * The same sampler as `plugins/rust/word-ban` (see its header for the exact
 * behaviour): config `{"words": [...]}`, ASCII case-insensitive byte
 * matching across token boundaries, special tokens never denied, every
 * `prepare` decided without logits. The index, the per-word-list sets and
 * the sequences share data by reference counts, as the Rust version does
 * with `Rc`.
 */
#include "deepwasm_plugin.h"

/* How many ids `setup` asks `token-bytes` for at once. */
#define CHUNK 4096u
/* How many distinct word lists keep their precomputed sets. */
#define CACHE_SLOTS 8

static uint8_t lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* ---- the vocabulary index ------------------------------------------------ */

typedef struct {
    int refs;
    uint32_t vocab_size;
    uint8_t *bytes;     /* lowercased bytes of every token, back to back */
    uint32_t *offsets;  /* token t is bytes[offsets[t] .. offsets[t + 1]] */
    uint32_t *sorted;   /* non-special ids with bytes, sorted by their bytes */
    size_t sorted_len;
    dw_token_bits_t special;
} index_t;

static const uint8_t *token(const index_t *ix, uint32_t t, size_t *len) {
    if (t >= ix->vocab_size) {
        *len = 0;
        return ix->bytes;
    }
    *len = ix->offsets[t + 1] - ix->offsets[t];
    return ix->bytes + ix->offsets[t];
}

/* Compare two byte strings as Rust compares `&[u8]`. */
static int compare_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return an < bn ? -1 : an > bn;
}

static const index_t *sorting;

static int by_bytes_then_id(const void *pa, const void *pb) {
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    size_t an, bn;
    const uint8_t *x = token(sorting, a, &an), *y = token(sorting, b, &bn);
    int c = compare_bytes(x, an, y, bn);
    return c ? c : (a < b ? -1 : a > b);
}

/* Read the served model's vocabulary through the tokenizer import. */
static index_t *index_from_tokenizer(void) {
    deepwasm_plugin_tokenizer_tokenizer_info_t info;
    deepwasm_plugin_tokenizer_info(&info);
    uint32_t vocab_size = info.vocab_size;
    deepwasm_plugin_tokenizer_tokenizer_info_free(&info);

    index_t *ix = (index_t *)dw_zalloc(sizeof *ix);
    ix->refs = 1;
    ix->vocab_size = vocab_size;
    ix->special = dw_token_bits_new(vocab_size);
    size_t nspecial;
    uint32_t *special = dw_special_token_ids(&nspecial);
    for (size_t i = 0; i < nspecial; i++) dw_token_bits_insert(&ix->special, special[i]);
    free(special);

    dw_buf_t bytes = {0};
    ix->offsets = (uint32_t *)dw_alloc(((size_t)vocab_size + 1) * 4);
    ix->offsets[0] = 0;
    uint32_t *ids = (uint32_t *)dw_alloc(CHUNK * 4);
    for (uint32_t start = 0; start < vocab_size; start += CHUNK) {
        uint32_t end = vocab_size - start < CHUNK ? vocab_size : start + CHUNK;
        for (uint32_t t = start; t < end; t++) ids[t - start] = t;
        deepwasm_plugin_tokenizer_list_token_id_t list = {ids, end - start};
        deepwasm_list_list_u8_t chunk;
        deepwasm_plugin_tokenizer_token_bytes(&list, &chunk);
        for (uint32_t t = start; t < end; t++) {
            /* Missing ids (a short answer) and special tokens keep no bytes. */
            size_t k = t - start;
            if (k < chunk.len && !dw_token_bits_contains(&ix->special, t)) {
                const deepwasm_list_u8_t *b = &chunk.ptr[k];
                dw_buf_reserve(&bytes, b->len);
                for (size_t i = 0; i < b->len; i++) bytes.ptr[bytes.len + i] = (char)lower(b->ptr[i]);
                bytes.len += b->len;
            }
            ix->offsets[t + 1] = (uint32_t)bytes.len;
        }
        deepwasm_list_list_u8_free(&chunk);
    }
    free(ids);
    ix->bytes = bytes.ptr ? (uint8_t *)bytes.ptr : (uint8_t *)dw_zalloc(1);

    ix->sorted = (uint32_t *)dw_alloc((size_t)vocab_size * 4);
    for (uint32_t t = 0; t < vocab_size; t++)
        if (ix->offsets[t + 1] > ix->offsets[t]) ix->sorted[ix->sorted_len++] = t;
    sorting = ix;
    qsort(ix->sorted, ix->sorted_len, 4, by_bytes_then_id);
    return ix;
}

static void index_release(index_t *ix) {
    if (!ix || --ix->refs > 0) return;
    free(ix->bytes);
    free(ix->offsets);
    free(ix->sorted);
    dw_token_bits_free(&ix->special);
    free(ix);
}

/* Add the ids whose bytes start with `prefix` to `set`. */
static void starting_with(const index_t *ix, const uint8_t *prefix, size_t n, dw_token_bits_t *set) {
    size_t lo = 0, hi = ix->sorted_len;
    while (lo < hi) { /* first token not below the prefix */
        size_t mid = (lo + hi) / 2, len;
        const uint8_t *b = token(ix, ix->sorted[mid], &len);
        if (compare_bytes(b, len, prefix, n) < 0) lo = mid + 1;
        else hi = mid;
    }
    for (size_t i = lo; i < ix->sorted_len; i++) {
        size_t len;
        const uint8_t *b = token(ix, ix->sorted[i], &len);
        if (len < n || memcmp(b, prefix, n) != 0) break;
        dw_token_bits_insert(set, ix->sorted[i]);
    }
}

static bool contains(const uint8_t *hay, size_t n, const uint8_t *needle, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0) return true;
    return false;
}

/* ---- word lists ------------------------------------------------------------ */

typedef struct {
    uint8_t *bytes;
    size_t len;
} word_t;

typedef struct {
    word_t *words;
    size_t count;
} words_t;

static int by_word(const void *pa, const void *pb) {
    const word_t *a = (const word_t *)pa, *b = (const word_t *)pb;
    return compare_bytes(a->bytes, a->len, b->bytes, b->len);
}

static void words_free(words_t *w) {
    for (size_t i = 0; i < w->count; i++) free(w->words[i].bytes);
    free(w->words);
    w->words = NULL;
    w->count = 0;
}

static bool words_equal(const words_t *a, const words_t *b) {
    if (a->count != b->count) return false;
    for (size_t i = 0; i < a->count; i++)
        if (by_word(&a->words[i], &b->words[i])) return false;
    return true;
}

/* Read the `words` field: lowercased, sorted, without duplicates. */
static bool read_words(deepwasm_string_t *config, words_t *out, dw_error_t *err) {
    static const char *const known[] = {"words"};
    dw_fields_t cfg;
    const dw_json_t *list = NULL;
    bool ok = dw_fields_parse(&cfg, "config", config, err) && dw_fields_only(&cfg, known, 1, err) &&
              dw_fields_get_string_list(&cfg, "words", &list, err);
    out->words = NULL;
    out->count = 0;
    if (ok && list) {
        for (size_t i = 0; i < list->count && ok; i++) {
            if (list->items[i].len == 0) {
                char name[32];
                snprintf(name, sizeof name, "words[%zu]", i);
                ok = dw_fields_error(&cfg, err, name, "must not be empty");
            }
        }
        if (ok) {
            out->words = (word_t *)dw_alloc(list->count * sizeof *out->words);
            for (size_t i = 0; i < list->count; i++) {
                word_t w = {(uint8_t *)dw_alloc(list->items[i].len), list->items[i].len};
                for (size_t k = 0; k < w.len; k++) w.bytes[k] = lower((uint8_t)list->items[i].str[k]);
                out->words[out->count++] = w;
            }
            qsort(out->words, out->count, sizeof *out->words, by_word);
            size_t k = 0;
            for (size_t i = 0; i < out->count; i++) {
                if (k && by_word(&out->words[k - 1], &out->words[i]) == 0) free(out->words[i].bytes);
                else out->words[k++] = out->words[i];
            }
            out->count = k;
        }
    }
    dw_fields_free(&cfg);
    return ok;
}

/* What one word list needs at every step, computed once per list. */
typedef struct {
    const uint8_t *prefix; /* w[..i], pointing into the word */
    size_t prefix_len;
    dw_token_bits_t completing; /* the tokens starting with w[i..] */
} completion_t;

typedef struct {
    int refs;
    words_t words;
    size_t keep;
    dw_token_bits_t containing;
    completion_t *completions;
    size_t ncompletions;
} ban_t;

static ban_t *ban_new(const index_t *ix, words_t words) {
    ban_t *b = (ban_t *)dw_zalloc(sizeof *b);
    b->refs = 1;
    b->words = words;
    size_t max_len = 0, total = 0;
    for (size_t i = 0; i < words.count; i++) {
        if (words.words[i].len > max_len) max_len = words.words[i].len;
        total += words.words[i].len - 1;
    }
    b->keep = max_len - 1;
    b->containing = dw_token_bits_new(ix->vocab_size);
    for (size_t i = 0; i < ix->sorted_len; i++) {
        size_t len;
        const uint8_t *bytes = token(ix, ix->sorted[i], &len);
        for (size_t k = 0; k < words.count; k++) {
            if (contains(bytes, len, words.words[k].bytes, words.words[k].len)) {
                dw_token_bits_insert(&b->containing, ix->sorted[i]);
                break;
            }
        }
    }
    b->completions = (completion_t *)dw_alloc(total * sizeof *b->completions);
    for (size_t k = 0; k < words.count; k++) {
        const word_t *w = &words.words[k];
        for (size_t i = w->len - 1; i > 0; i--) {
            completion_t *c = &b->completions[b->ncompletions++];
            c->prefix = w->bytes;
            c->prefix_len = i;
            c->completing = dw_token_bits_new(ix->vocab_size);
            starting_with(ix, w->bytes + i, w->len - i, &c->completing);
        }
    }
    return b;
}

static void ban_release(ban_t *b) {
    if (!b || --b->refs > 0) return;
    for (size_t i = 0; i < b->ncompletions; i++) dw_token_bits_free(&b->completions[i].completing);
    free(b->completions);
    dw_token_bits_free(&b->containing);
    words_free(&b->words);
    free(b);
}

/* ---- instance state ------------------------------------------------------------ */

static index_t *INDEX;
static ban_t *CACHE[CACHE_SLOTS]; /* least recently used first */
static size_t CACHED;

static void cache_clear(void) {
    for (size_t i = 0; i < CACHED; i++) ban_release(CACHE[i]);
    CACHED = 0;
}

static index_t *index_get(void) {
    if (!INDEX) INDEX = index_from_tokenizer();
    return INDEX;
}

/* The ban of `words` (taking them), from the cache or computed now; one reference for the caller. */
static ban_t *ban_get(const index_t *ix, words_t words) {
    for (size_t i = 0; i < CACHED; i++) {
        if (words_equal(&CACHE[i]->words, &words)) {
            ban_t *b = CACHE[i];
            memmove(&CACHE[i], &CACHE[i + 1], (CACHED - i - 1) * sizeof *CACHE);
            CACHE[CACHED - 1] = b;
            words_free(&words);
            b->refs++;
            return b;
        }
    }
    ban_t *b = ban_new(ix, words);
    if (CACHED == CACHE_SLOTS) {
        ban_release(CACHE[0]);
        memmove(&CACHE[0], &CACHE[1], (CACHED - 1) * sizeof *CACHE);
        CACHED--;
    }
    CACHE[CACHED++] = b;
    b->refs++;
    return b;
}

bool exports_deepwasm_plugin_controller_setup(dw_error_t *err) {
    index_release(INDEX);
    INDEX = index_from_tokenizer();
    cache_clear();
    return true;
}

/* ---- sequences ------------------------------------------------------------------ */

struct exports_deepwasm_plugin_controller_sequence_t {
    index_t *index;
    ban_t *ban; /* NULL without words */
    dw_buf_t tail;
    dw_token_bits_t deny;
};

bool exports_deepwasm_plugin_controller_static_sequence_open(
    deepwasm_string_t *config, exports_deepwasm_plugin_controller_list_token_id_t *prompt,
    exports_deepwasm_plugin_controller_sampling_params_t *params,
    exports_deepwasm_plugin_controller_own_sequence_t *ret, dw_error_t *err) {
    words_t words;
    bool ok = read_words(config, &words, err);
    deepwasm_string_free(config);
    exports_deepwasm_plugin_controller_list_token_id_free(prompt);
    if (!ok) return false;
    exports_deepwasm_plugin_controller_sequence_t *seq = (exports_deepwasm_plugin_controller_sequence_t *)dw_zalloc(sizeof *seq);
    seq->index = index_get();
    seq->index->refs++;
    if (words.count) {
        seq->ban = ban_get(seq->index, words);
        seq->deny = dw_token_bits_new(seq->index->vocab_size);
    } else {
        words_free(&words);
    }
    *ret = exports_deepwasm_plugin_controller_sequence_new(seq);
    return true;
}

bool exports_deepwasm_plugin_controller_method_sequence_prepare(
    exports_deepwasm_plugin_controller_borrow_sequence_t self, uint32_t step,
    exports_deepwasm_plugin_controller_list_token_id_t *new_tokens, dw_prepared_t *ret, dw_error_t *err) {
    if (!self->ban) {
        exports_deepwasm_plugin_controller_list_token_id_free(new_tokens);
        dw_defer(ret);
        return true;
    }
    const index_t *ix = self->index;
    dw_buf_t *tail = &self->tail;
    size_t keep = self->ban->keep;
    for (size_t i = 0; i < new_tokens->len; i++) {
        uint32_t t = new_tokens->ptr[i];
        if (dw_token_bits_contains(&ix->special, t)) {
            tail->len = 0;
            continue;
        }
        size_t len;
        const uint8_t *b = token(ix, t, &len);
        dw_buf_push(tail, b, len);
        if (tail->len > keep) {
            memmove(tail->ptr, tail->ptr + tail->len - keep, keep);
            tail->len = keep;
        }
    }
    exports_deepwasm_plugin_controller_list_token_id_free(new_tokens);

    dw_token_bits_assign(&self->deny, &self->ban->containing);
    for (size_t i = 0; i < self->ban->ncompletions; i++) {
        const completion_t *c = &self->ban->completions[i];
        if (tail->len >= c->prefix_len &&
            memcmp(tail->ptr + tail->len - c->prefix_len, c->prefix, c->prefix_len) == 0)
            dw_token_bits_union(&self->deny, &c->completing);
    }
    if (dw_token_bits_is_empty(&self->deny)) dw_defer(ret);
    else dw_deny(ret, &self->deny);
    return true;
}

bool exports_deepwasm_plugin_controller_method_sequence_decide(
    exports_deepwasm_plugin_controller_borrow_sequence_t self, uint32_t step,
    exports_deepwasm_plugin_controller_borrow_logits_t logits, dw_decision_t *ret, dw_error_t *err) {
    /* `prepare` always decides; a host that calls this anyway gets a defer.
     * The borrowed handle must be given back before the call returns. */
    deepwasm_plugin_logits_logits_drop_borrow(logits);
    dw_sample(ret);
    return true;
}

void exports_deepwasm_plugin_controller_sequence_destructor(exports_deepwasm_plugin_controller_sequence_t *rep) {
    index_release(rep->index);
    ban_release(rep->ban);
    dw_buf_free(&rep->tail);
    dw_token_bits_free(&rep->deny);
    free(rep);
}
