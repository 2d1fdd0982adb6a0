/*
 * `{{name}}`: a deepwasm tool plugin (world `tool`), in C.
 *
 * One tool, `echo`: answers `{"text": ..., "chars": N}` with the text it
 * was given and its length in Unicode characters.
 *
 * The arguments of an exported function belong to the plugin (free them);
 * what it returns must come from malloc (the bindings free it).
 */
#include "deepwasm_plugin.h"

/* The JSON Schema of the arguments; the host checks calls against it. */
#define SCHEMA                                                                                     \
    "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"                        \
    "\"required\":[\"text\"],\"additionalProperties\":false}"

void exports_deepwasm_plugin_tool_provider_describe(exports_deepwasm_plugin_tool_provider_list_tool_spec_t *ret) {
    ret->len = 1;
    ret->ptr = dw_alloc(sizeof *ret->ptr);
    ret->ptr[0] = dw_tool_spec("echo", "Echoes a text and counts its characters.", SCHEMA);
}

bool exports_deepwasm_plugin_tool_provider_call(deepwasm_string_t *name, deepwasm_string_t *arguments,
                                                deepwasm_plugin_types_tool_output_t *ret, dw_error_t *err) {
    static const char *const known[] = {"text"};
    bool ok;
    if (!dw_string_eq(name, "echo")) {
        ok = dw_not_found(err, "no tool named \"%.*s\"; this plugin has only \"echo\"", (int)name->len,
                          (const char *)name->ptr);
    } else {
        dw_fields_t args;
        const dw_json_t *text = NULL;
        ok = dw_fields_parse(&args, "arguments", arguments, err) && dw_fields_only(&args, known, 1, err) &&
             dw_fields_require_string(&args, "text", &text, err);
        if (ok) {
            /* Characters are the UTF-8 bytes that do not continue one. */
            size_t chars = 0;
            for (size_t i = 0; i < text->len; i++) chars += ((uint8_t)text->str[i] & 0xc0) != 0x80;
            dw_buf_t json = {0};
            dw_buf_puts(&json, "{\"text\":");
            dw_buf_json_string(&json, (const uint8_t *)text->str, text->len);
            dw_buf_printf(&json, ",\"chars\":%zu}", chars);
            dw_tool_output_json(ret, &json);
        }
        dw_fields_free(&args);
    }
    deepwasm_string_free(name);
    deepwasm_string_free(arguments);
    return ok;
}
