// `{{name}}`: a deepwasm tool plugin (world `tool`), in JavaScript.
//
// One tool, `echo`: answers `{"text": ..., "chars": N}` with the text it
// was given and its length in Unicode characters.

import { Fields, jsonOutput, notFound, toolSpec } from './deepwasm_plugin.js';

// The JSON Schema of the arguments; the host checks calls against it.
const SCHEMA =
  '{"type":"object","properties":{"text":{"type":"string"}},' +
  '"required":["text"],"additionalProperties":false}';

export const toolProvider = {
  describe() {
    return [toolSpec('echo', 'Echoes a text and counts its characters.', SCHEMA)];
  },

  call(name, args) {
    if (name !== 'echo') {
      throw notFound(`no tool named "${name}"; this plugin has only "echo"`);
    }
    const fields = Fields.parse('arguments', args);
    fields.only('text');
    const text = fields.require('text', fields.getString);
    // Spreading a string splits it into code points, not UTF-16 units.
    return jsonOutput({ text, chars: [...text].length });
  },
};
