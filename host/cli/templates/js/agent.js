// `{{name}}`: a deepwasm agent plugin (world `agent`), in JavaScript.
//
// Asks the served model the task once, through its chat template, and
// answers with the reply. Config: `{"max_tokens": 256}` (the default). From
// here, offer the granted tools (`available()` of
// 'deepwasm:plugin/tools@0.1.0') in the options and loop over the model's
// tool calls.

import { chat } from 'deepwasm:plugin/inference@0.1.0';
import { Fields } from './deepwasm_plugin.js';

export const runner = {
  run(task, config) {
    const cfg = Fields.parse('config', config);
    cfg.only('max_tokens');
    const maxTokens = cfg.getInt('max_tokens', 256);
    const question = {
      role: 'user',
      content: task,
      reasoning: undefined,
      toolCalls: [],
      toolCallId: undefined,
      name: undefined,
    };
    const options = {
      // `undefined` keeps what the request asked for.
      params: {},
      maxTokens,
      stop: [],
      tools: [],
      toolChoice: { tag: 'auto' },
      sampler: undefined,
    };
    let reply;
    try {
      reply = chat([question], options);
    } catch (e) {
      // The host's error (a budget ran out, say) is this run's error.
      throw e.payload ?? e;
    }
    return reply.message.content;
  },
};
