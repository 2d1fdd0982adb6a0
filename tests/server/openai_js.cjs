// The official OpenAI JavaScript SDK against the server: chat, streamed
// chat, the Responses API (whole and streamed), embeddings and an error,
// as a JavaScript client sees them. Run by tests/server.rs with the
// environment tests/server/common.py documents.
"use strict";

const assert = require("node:assert/strict");
const OpenAI = require("openai");

const client = new OpenAI({
  baseURL: process.env.DEEPWASM_URL + "/v1",
  apiKey: process.env.DEEPWASM_KEY_ALPHA,
  maxRetries: 0,
});
const model = process.env.DEEPWASM_SERVED_MODEL;
const messages = [{ role: "user", content: "Count: 1, 2, 3," }];

const tests = {
  async chatAndStream() {
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
    const text = whole.choices[0].message.content;
    assert.ok(text.length > 0, JSON.stringify(whole));
    const stream = await client.chat.completions.create({
      model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let streamed = "";
    let usage = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) streamed += c.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(streamed, text);
    assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
  },

  async responsesWholeAndStreamed() {
    const whole = await client.responses.create({ model, input: "Count: 1, 2, 3,", max_output_tokens: 8, temperature: 0 });
    assert.equal(whole.object, "response");
    assert.ok(whole.output_text.length > 0, JSON.stringify(whole));
    const stream = await client.responses.create({
      model, input: "Count: 1, 2, 3,", max_output_tokens: 8, temperature: 0, stream: true,
    });
    let text = "";
    const types = [];
    let last = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed" || event.type === "response.incomplete") last = event.response;
    }
    assert.equal(types[0], "response.created");
    assert.equal(text, whole.output_text);
    assert.equal(last.output_text ?? last.output[0].content[0].text, whole.output_text);
    // The SDK's helper accumulates the same events.
    const helper = client.responses.stream({ model, input: "Count: 1, 2, 3,", max_output_tokens: 8, temperature: 0 });
    let helperText = "";
    helper.on("response.output_text.delta", (e) => { helperText += e.delta; });
    await helper.done().catch(() => {});
    assert.equal(helperText, whole.output_text);
  },

  async embeddings() {
    const r = await client.embeddings.create({ model, input: ["a cat", "a dog"] });
    assert.equal(r.data.length, 2);
    const v = r.data[0].embedding;
    const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-3, `norm ${norm}`);
  },

  async errorsAreTyped() {
    await assert.rejects(
      client.chat.completions.create({ model, messages, max_tokens: 2, temperature: 9 }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature",
    );
    await assert.rejects(
      client.chat.completions.create({ model: "gpt-4o", messages, max_tokens: 2 }),
      (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
    );
  },
};

(async () => {
  let failed = 0;
  for (const [name, fn] of Object.entries(tests)) {
    const started = Date.now();
    try {
      await fn();
      console.log(`ok     ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    } catch (e) {
      failed += 1;
      console.log(`FAILED ${name}\n${e.stack}`);
    }
  }
  console.log(`${Object.keys(tests).length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
