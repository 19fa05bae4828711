// Drives a running npumesh cluster with the official OpenAI client and prints
// one JSON object with what it got. The Go test (internal/clustertest) checks
// the values; this script only reports them.
import OpenAI from "openai";

const baseURL = process.env.NPUMESH_API_BASE; // e.g. http://127.0.0.1:18080/v1
const client = new OpenAI({ baseURL, apiKey: process.env.NPUMESH_API_KEY || "none", maxRetries: 0, timeout: 60_000 });

const out = {};
const models = await client.models.list();
out.models = models.data.map((m) => m.id);
const model = out.models[0];

const completion = await client.completions.create({ model, prompt: "", max_tokens: 200, temperature: 0 });
out.completion = { text: completion.choices[0].text, finish_reason: completion.choices[0].finish_reason, usage: completion.usage };

const chat = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Once upon a time" }],
  max_tokens: 32,
  temperature: 0,
});
out.chat = { role: chat.choices[0].message.role, content: chat.choices[0].message.content, finish_reason: chat.choices[0].finish_reason, usage: chat.usage };

const stream = await client.completions.create({ model, prompt: "", max_tokens: 200, temperature: 0, stream: true, stream_options: { include_usage: true } });
let text = "";
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices.length > 0) text += chunk.choices[0].text;
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text, chunks, usage };

const chatStream = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Lily" }], max_tokens: 16, temperature: 0, stream: true });
let chatText = "";
for await (const chunk of chatStream) {
  if (chunk.choices.length > 0) chatText += chunk.choices[0].delta.content ?? "";
}
out.chat_stream = { text: chatText };

try {
  await client.completions.create({ model: "no-such-model", prompt: "x", max_tokens: 4 });
  out.not_found = { status: 0 };
} catch (e) {
  out.not_found = { status: e.status, type: e.error?.type ?? e.type, message: e.message };
}

console.log(JSON.stringify(out));
