// Runs calls through the official OpenAI client library (npm `openai`) and
// prints what came back, as JSON, for tests/integration/test_aiproxy_openai_client.py.
//
// Environment: OPENAI_DIR, where the `openai` package is installed (its
// directory, holding package.json).
// stdin: {"base_url": "...", "api_key": "...", "calls": [{"op": ..., ...}]}
// stdout: one line, a JSON list with one result per call, in order:
//   {"ok": true, "value": ...}  or  {"ok": false, "error": {"class", "status", "code", "type", "message", ...}}
// The ops:
//   chat {params}            client.chat.completions.create(params): the response
//   chat_stream {params}     the same with stream: true, iterated chunk by chunk:
//                            {"chunks": [{"t": ms since the call, "chunk": ...}]}
//   completion {params}      client.completions.create(params)
//   embeddings {params}      client.embeddings.create(params)
//   models_list              client.models.list(), every page: the list of models
//   models_retrieve {model}  client.models.retrieve(model)
// Extra body fields (such as the mock provider's "mock") go in params as they
// are: the client sends the body object as given.
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const require = createRequire(path.resolve(process.env.OPENAI_DIR, 'package.json'));
const openai = require('openai');
const { OpenAI } = openai;

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return Buffer.concat(parts).toString('utf8');
}

function describeError(e) {
  const out = { class: e?.constructor?.name, message: String(e?.message ?? e) };
  if (e instanceof openai.APIError) {
    Object.assign(out, { api_error: true, status: e.status ?? null, code: e.code ?? null,
                         type: e.type ?? null, body: e.error ?? null });
    for (const name of ['AuthenticationError', 'NotFoundError', 'RateLimitError', 'BadRequestError',
                        'PermissionDeniedError', 'InternalServerError', 'APIConnectionError']) {
      if (e instanceof openai[name]) (out.instance_of ??= []).push(name);
    }
  }
  return out;
}

async function run(client, call) {
  switch (call.op) {
    case 'chat':
      return client.chat.completions.create(call.params);
    case 'chat_stream': {
      const t0 = performance.now();
      const stream = await client.chat.completions.create({ ...call.params, stream: true });
      const chunks = [];
      for await (const chunk of stream) chunks.push({ t: performance.now() - t0, chunk });
      return { chunks };
    }
    case 'completion':
      return client.completions.create(call.params);
    case 'embeddings':
      return client.embeddings.create(call.params);
    case 'models_list': {
      const models = [];
      for await (const m of client.models.list()) models.push(m);
      return models;
    }
    case 'models_retrieve':
      return client.models.retrieve(call.model);
    default:
      throw new Error('unknown op ' + call.op);
  }
}

const spec = JSON.parse(await readStdin());
const client = new OpenAI({ baseURL: spec.base_url, apiKey: spec.api_key, maxRetries: 0, timeout: 20000 });
const results = [];
for (const call of spec.calls) {
  try {
    results.push({ ok: true, value: await run(client, call) });
  } catch (e) {
    results.push({ ok: false, error: describeError(e) });
  }
}
process.stdout.write(JSON.stringify(results) + '\n');
