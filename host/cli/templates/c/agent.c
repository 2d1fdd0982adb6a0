/*
 * `{{name}}`: a deepwasm agent plugin (world `agent`), in C.
 *
 * Asks the served model the task once, through its chat template, and
 * answers with the reply. Config: `{"max_tokens": 256}` (the default). From
 * here, offer the granted tools (`deepwasm_plugin_tools_available`) in the
 * options and loop over the model's tool calls.
 *
 * The arguments of an exported function belong to the plugin (free them);
 * what it returns must come from malloc (the bindings free it).
 */
#include "deepwasm_plugin.h"

bool exports_deepwasm_plugin_runner_run(deepwasm_string_t *task, deepwasm_string_t *config, deepwasm_string_t *ret,
                                        dw_error_t *err) {
    static const char *const known[] = {"max_tokens"};
    dw_fields_t cfg;
    uint32_t max_tokens = 256;
    bool ok = dw_fields_parse(&cfg, "config", config, err) && dw_fields_only(&cfg, known, 1, err) &&
              dw_fields_get_u32(&cfg, "max_tokens", 256, &max_tokens, err);
    dw_fields_free(&cfg);
    if (ok) {
        /* Zeroed options: every sampling parameter `none` (what the request
         * asked for), no stop strings, no tools, tool choice `auto`. */
        deepwasm_plugin_types_message_t question = {0};
        question.role = DEEPWASM_PLUGIN_TYPES_ROLE_USER;
        question.content = *task;
        deepwasm_plugin_inference_list_message_t messages = {&question, 1};
        deepwasm_plugin_inference_generate_options_t options = {0};
        options.max_tokens.is_some = true;
        options.max_tokens.val = max_tokens;
        options.tool_choice.tag = DEEPWASM_PLUGIN_INFERENCE_TOOL_CHOICE_AUTO;
        deepwasm_plugin_inference_chat_response_t reply;
        /* The host's error (a budget ran out, say) is this run's error. */
        ok = deepwasm_plugin_inference_chat(&messages, &options, &reply, err);
        if (ok) {
            *ret = reply.message.content;
            reply.message.content.ptr = NULL;
            reply.message.content.len = 0;
            deepwasm_plugin_inference_chat_response_free(&reply);
        }
    }
    deepwasm_string_free(task);
    deepwasm_string_free(config);
    return ok;
}
