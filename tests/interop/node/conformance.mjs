// A DEL client in Node.js, written from protos/ and docs/PROTOCOL.md alone (no Python, no
// generated code): the conformance check of the wire contract.
//
//   node conformance.mjs HOST:PORT [--vectors FILE] [--reference FILE] [--no-raw]
//
// Against a del-server at HOST:PORT (plaintext, no token) it checks, in order:
//   vectors     docs/protocol_vectors.json: A from μ, its own sampler with the vectors'
//               uniforms, its own bit packing, frame splitting, decoding
//   health      grpc.health.v1 Check: SERVING
//   reflection  grpc.reflection.v1 lists del.v1.SplitInference
//   manifest    every level carries A, c, k, b and an id; A is c·√(4kK + μ²)/μ
//   bundle      FetchClientBundle: offsets, SHA-256 = the manifest's digest, safetensors parsed,
//               metadata and table rows (against the vectors when it is the default model)
//   raw         greedy raw generation of the reference prompt = the golden ids and text
//               (needs a server started with enable_raw; --no-raw skips it)
//   private     a private generation at a manifest level: its own quantizer with Node's
//               crypto randomness, its own packing, the level named; the Final's level,
//               soft prompt and byte counts; then the contract's refusals
// It prints one JSON line {"ok": true, "checks": [...]} and exits 0, or names the first
// failure and exits 1.

import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "..", "..", "..");
const SHARED = process.env.DEL_SHARED_DIR ?? resolve(REPO, "..", "shared");
const DEADLINE_MS = 60_000;
const checks = [];

function fail(message) {
  throw new Error(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function close(a, b, rel) {
  return Math.abs(a - b) <= rel * Math.abs(b);
}

function parseArgs(argv) {
  const args = {
    target: null,
    vectors: join(REPO, "docs", "protocol_vectors.json"),
    reference: join(SHARED, "models", "stories260K", "reference_greedy.json"),
    raw: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--vectors") args.vectors = argv[++i];
    else if (arg === "--reference") args.reference = argv[++i];
    else if (arg === "--no-raw") args.raw = false;
    else if (!arg.startsWith("--") && args.target === null) args.target = arg;
    else fail(`unknown argument ${arg}`);
  }
  if (!args.target) fail("usage: node conformance.mjs HOST:PORT [--vectors F] [--reference F] [--no-raw]");
  return args;
}

// ── The mechanism, from PROTOCOL.md §3 ───────────────────────────────────────────────────

// §3.5: A from μ, the paper's calibration.
function scaleFromMu(mu, dim, bits, clip) {
  const K = 2 ** bits - 1;
  return (clip * Math.sqrt(4 * dim * K + mu * mu)) / mu;
}

// §3.6: one uniform in [0, 1) from 53 random bits of the CSPRNG.
function secureUniforms(count) {
  const bytes = randomBytes(8 * count);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const high = bytes.readUInt32BE(8 * i) >>> 5; // 27 bits
    const low = bytes.readUInt32BE(8 * i + 4) >>> 6; // 26 bits
    out[i] = (high * 2 ** 26 + low) / 2 ** 53;
  }
  return out;
}

// §3.4 and §3.6: clip, p = 1/2 + x/(2A), N ~ Binomial(K, p) by inversion of u, lighter side.
function binomialSymbol(x, clip, scale, bits, u) {
  const K = 2 ** bits - 1;
  const p = 0.5 + Math.min(Math.max(x, -clip), clip) / (2 * scale);
  const lo = Math.min(p, 1 - p);
  const hi = 1 - lo;
  const ratio = lo / hi;
  let pmf = hi ** K;
  let cdf = pmf;
  let n = u >= cdf ? 1 : 0;
  for (let j = 0; j < K - 1; j++) {
    pmf *= ratio * ((K - j) / (j + 1));
    cdf += pmf;
    n += u >= cdf ? 1 : 0;
  }
  return p > 0.5 ? K - n : n;
}

// (T, k) rows, token-major, one uniform per coordinate -> flat symbols
function privatize(rows, { clip, scale, bits }, uniforms) {
  const flat = rows.flat();
  check(uniforms.length === flat.length, "one uniform per coordinate");
  return flat.map((x, i) => binomialSymbol(x, clip, scale, bits, uniforms[i]));
}

// §3.7: MSB first into one bit stream, the last byte zero-padded.
function pack(symbols, bits) {
  const out = Buffer.alloc(Math.ceil((symbols.length * bits) / 8));
  let bit = 0;
  for (const symbol of symbols) {
    check(Number.isInteger(symbol) && symbol >= 0 && symbol < 2 ** bits, `symbol ${symbol} > ${bits} bits`);
    for (let b = bits - 1; b >= 0; b--, bit++) {
      if ((symbol >> b) & 1) out[bit >> 3] |= 0x80 >> (bit & 7);
    }
  }
  return out;
}

// §3.8: frames of whole tokens, each packed on its own.
function tokensPerFrame(bitsPerToken, budgetBytes) {
  return Math.max(1, Math.floor((budgetBytes * 8) / bitsPerToken));
}

function privateFrames(symbols, dim, bits, budgetBytes) {
  const perFrame = tokensPerFrame(dim * bits, budgetBytes);
  const tokens = symbols.length / dim;
  const frames = [];
  for (let start = 0, sequence = 0; start < tokens; start += perFrame, sequence++) {
    const count = Math.min(perFrame, tokens - start);
    const payload = pack(symbols.slice(start * dim, (start + count) * dim), bits);
    frames.push({ sequence, token_count: count, dim, bits, payload });
  }
  return frames;
}

// §5: raw rows as little-endian float32.
function rawFrames(rows, dim, budgetBytes) {
  const perFrame = tokensPerFrame(dim * 32, budgetBytes);
  const frames = [];
  for (let start = 0, sequence = 0; start < rows.length; start += perFrame, sequence++) {
    const chunk = rows.slice(start, start + perFrame);
    const payload = Buffer.alloc(4 * dim * chunk.length);
    chunk.flat().forEach((value, i) => payload.writeFloatLE(value, 4 * i));
    frames.push({ sequence, token_count: chunk.length, dim, bits: 32, payload });
  }
  return frames;
}

function decode(symbol, scale, bits) {
  const K = 2 ** bits - 1;
  return Math.fround(scale * ((2 * symbol) / K - 1));
}

// ── The bundle, from PROTOCOL.md §2 ──────────────────────────────────────────────────────

function sha256(buffer) {
  return createHash("sha256").update(buffer).digest("hex");
}

function parseBundle(data) {
  const headerLength = Number(data.readBigUInt64LE(0));
  const header = JSON.parse(data.subarray(8, 8 + headerLength).toString("utf8"));
  const metadata = JSON.parse(header.__metadata__.del_client_bundle);
  check(metadata.format === "del-client-bundle/1", `bundle format ${metadata.format}`);
  const { dtype, shape, data_offsets: [begin, end] } = header.table;
  check(dtype === "F32" && shape.length === 2, `table ${dtype} ${shape}`);
  check(end - begin === 4 * shape[0] * shape[1], "table size");
  const start = 8 + headerLength + begin;
  const [vocab, width] = shape;
  const row = (id) => {
    check(Number.isInteger(id) && id >= 0 && id < vocab, `token id ${id} outside the table`);
    const values = new Array(width);
    for (let j = 0; j < width; j++) values[j] = data.readFloatLE(start + 4 * (id * width + j));
    return values;
  };
  return { metadata, vocab, width, row };
}

// ── gRPC ─────────────────────────────────────────────────────────────────────────────────

function load() {
  const definition = protoLoader.loadSync(
    ["del/v1/inference.proto", "grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto"],
    { includeDirs: [join(REPO, "protos")], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true },
  );
  return { definition, proto: grpc.loadPackageDefinition(definition) };
}

function deadline() {
  return { deadline: Date.now() + DEADLINE_MS };
}

function unary(client, method, request) {
  return new Promise((ok, ko) => client[method](request, deadline(), (err, reply) => (err ? ko(err) : ok(reply))));
}

function serverStream(client, method, request) {
  return new Promise((ok, ko) => {
    const replies = [];
    const call = client[method](request, deadline());
    call.on("data", (reply) => replies.push(reply));
    call.on("error", ko);
    call.on("end", () => ok(replies));
  });
}

// One Generate stream: write every message, then read to the end. Resolves with the replies,
// rejects with the gRPC error (err.code, err.details).
function generate(client, messages) {
  return new Promise((ok, ko) => {
    const replies = [];
    const call = client.Generate(deadline());
    call.on("data", (reply) => replies.push(reply));
    call.on("error", ko);
    call.on("end", () => ok(replies));
    for (const message of messages) call.write(message);
    call.end();
  });
}

async function statusOf(client, messages) {
  try {
    await generate(client, messages);
  } catch (err) {
    return err.code;
  }
  return grpc.status.OK;
}

// proto3's canonical encoding leaves out fields at their default value (0, "", false); the
// server counts each message at that size (Usage, §3.10), so send them that way too.
function compact(value) {
  if (Buffer.isBuffer(value) || Array.isArray(value) || typeof value !== "object") return value;
  const out = {};
  for (const [key, field] of Object.entries(value)) {
    if (field === 0 || field === "" || field === false) continue;
    out[key] = compact(field);
  }
  return out;
}

function request(kind, value) {
  return { [kind]: compact(value) };
}

function streamMessages(header, frames) {
  return [request("header", header), ...frames.map((f) => request("frame", f)), request("end", {})];
}

function folded(replies) {
  const kinds = replies.map((r) => r.kind);
  check(kinds.length > 0 && kinds.at(-1) === "final", `stream must end with one Final: ${kinds}`);
  check(kinds.slice(0, -1).every((k) => k === "tokens"), `only TokenChunks before the Final: ${kinds}`);
  const chunks = replies.slice(0, -1).map((r) => r.tokens);
  return {
    ids: chunks.flatMap((c) => c.token_ids),
    text: chunks.map((c) => c.text).join(""),
    final: replies.at(-1).final,
  };
}

async function fetchBundle(client, digest) {
  const chunks = await serverStream(client, "FetchClientBundle", { digest });
  let received = 0;
  for (const chunk of chunks) {
    check(chunk.offset === received, `chunk at ${chunk.offset}, expected ${received}`);
    received += chunk.data.length;
    check(chunk.total_size === chunks[0].total_size, "chunks disagree about the total size");
  }
  const data = Buffer.concat(chunks.map((c) => c.data));
  check(data.length === chunks[0].total_size, "bundle shorter than its total size");
  check(sha256(data) === digest, `bundle SHA-256 ${sha256(data)} is not the manifest's ${digest}`);
  return { data, bundle: parseBundle(data) };
}

// ── The checks ───────────────────────────────────────────────────────────────────────────

function checkVectors(vectors) {
  for (const c of [...vectors.scale_from_mu, ...vectors.levels.levels]) {
    check(close(scaleFromMu(c.mu, c.dim, c.bits, c.clip), c.scale, 1e-12), `A from μ=${c.mu} b=${c.bits}`);
  }
  const rows = vectors.table_rows.rows;
  for (const c of vectors.privatize.cases) {
    const symbols = privatize(rows, c, vectors.privatize.uniforms);
    check(JSON.stringify(symbols) === JSON.stringify(c.symbols.flat()), `symbols at b=${c.bits}`);
    const payload = pack(symbols, c.bits);
    check(payload.toString("hex") === c.payload_hex, `payload at b=${c.bits}`);
    check(sha256(payload) === c.payload_sha256, `payload digest at b=${c.bits}`);
    const decoded = symbols.map((n) => decode(n, c.scale, c.bits));
    check(JSON.stringify(decoded) === JSON.stringify(c.decoded.flat()), `decoded at b=${c.bits}`);
  }
  for (const c of vectors.packing) {
    check(pack(c.symbols, c.bits).toString("hex") === c.payload_hex, `packing at b=${c.bits}`);
  }
  const split = vectors.frames;
  const four = vectors.privatize.cases.find((c) => c.bits === 4);
  const frames = privateFrames(four.symbols.flat(), four.dim, 4, split.max_payload_bytes);
  check(frames.length === split.frames.length, "frame count");
  frames.forEach((f, i) => {
    const expected = split.frames[i];
    check(f.sequence === expected.sequence && f.token_count === expected.token_count, `frame ${i}`);
    check(f.payload.toString("hex") === expected.payload_hex, `frame ${i} payload`);
  });
  checks.push("vectors");
}

async function checkHealth(proto, target) {
  const health = new proto.grpc.health.v1.Health(target, grpc.credentials.createInsecure());
  for (const service of ["", "del.v1.SplitInference"]) {
    const reply = await unary(health, "Check", { service });
    check(reply.status === "SERVING", `health of ${JSON.stringify(service)}: ${reply.status}`);
  }
  health.close();
  checks.push("health");
}

async function checkReflection(proto, target) {
  const reflection = new proto.grpc.reflection.v1.ServerReflection(target, grpc.credentials.createInsecure());
  const replies = await new Promise((ok, ko) => {
    const out = [];
    const call = reflection.ServerReflectionInfo(deadline());
    call.on("data", (r) => out.push(r));
    call.on("error", ko);
    call.on("end", () => ok(out));
    call.write({ list_services: "" });
    call.end();
  });
  const names = replies[0].list_services_response.service.map((s) => s.name);
  check(names.includes("del.v1.SplitInference"), `reflection v1 lists ${names}`);
  reflection.close();
  checks.push("reflection");
}

function checkManifest(model) {
  check(model.privacy_levels.length > 0, "the manifest offers no privacy level");
  for (const level of model.privacy_levels) {
    check(level.id && level.scale > 0, `level ${level.id} carries its id and A`);
    check(level.dim === model.projection_dim && level.clip === model.clip, `level ${level.id}: k and c`);
    check(model.supported_bits.includes(level.bits), `level ${level.id}: bits ${level.bits}`);
    const computed = scaleFromMu(level.mu, level.dim, level.bits, level.clip);
    check(close(computed, level.scale, model.level_tolerance), `level ${level.id}: A from μ`);
  }
  check(model._bos_id === "bos_id", "the manifest names the BOS the server prepends");
  checks.push("manifest");
}

function checkBundle({ data, bundle }, model, vectors) {
  const m = bundle.metadata;
  check(m.model_id === model.model_id && m.mechanism === undefined, "projected bundle metadata");
  check(m.projection_dim === model.projection_dim && bundle.width === model.projection_dim, "bundle k");
  check(m.clip === model.clip && m.bos_id === model.bos_id, "bundle clip and BOS");
  if (sha256(data) === vectors.bundle.digest) {
    const { ids, rows } = vectors.table_rows;
    ids.forEach((id, i) => check(JSON.stringify(bundle.row(id)) === JSON.stringify(rows[i]), `row ${id}`));
    check(data.length === vectors.bundle.size_bytes, "bundle size");
  }
  checks.push("bundle");
}

async function checkRaw(client, definition, model, reference) {
  check(model.raw_mechanism_enabled, "the server does not offer raw: start it with enable_raw");
  const { data, bundle } = await fetchBundle(client, model.raw_bundle_digest);
  const m = bundle.metadata;
  check(m.mechanism === "raw" && m.clip === undefined && m.projection_dim === undefined, "raw bundle metadata");
  check(m.hidden_size === model.hidden_size && bundle.width === model.hidden_size, "raw bundle width");
  check(data.length > 0, "raw bundle");
  // The BOS rule (§3.2): the server prepends BOS; the frames carry the tokens after it.
  const [bos, ...ids] = reference.prompt_ids;
  check(bos === model.bos_id, "the reference prompt starts with BOS");
  const header = {
    mechanism: { mechanism: "MECHANISM_RAW_FLOAT32", dim: model.hidden_size, bits: 32 },
    sampling: { temperature: 0, max_new_tokens: 60 },
    bundle_digest: model.raw_bundle_digest,
  };
  const budget = model.max_frame_payload_bytes;
  const messages = streamMessages(header, rawFrames(ids.map(bundle.row), model.hidden_size, budget));
  const { ids: generated, text, final } = folded(await generate(client, messages));
  const golden = reference.greedy_ids_60.slice(reference.prompt_ids.length);
  check(JSON.stringify(generated) === JSON.stringify(golden), `raw greedy ids ${generated}`);
  check(reference.prompt + text === reference.greedy_text, "raw greedy text");
  check(final.soft_prompt === "SOFT_PROMPT_RAW" && final.level_id === "", "raw Final");
  check(final.reading === "PROMPT_READING_RAW", `raw reading ${final.reading}`);
  check(final.usage.prompt_tokens === ids.length, "raw prompt tokens");
  const withBos = streamMessages(header, rawFrames([bos, ...ids].map(bundle.row), model.hidden_size, budget));
  const refused = await statusOf(client, withBos);
  check(refused === grpc.status.INVALID_ARGUMENT, `raw frames starting with BOS: status ${refused}`);
  checks.push("raw");
}

function wireBytes(definition, messages) {
  const serialize = definition["del.v1.SplitInference"].Generate.requestSerialize;
  return messages.reduce((sum, m) => sum + serialize(m).length + 5, 0);
}

async function checkPrivate(client, definition, model, bundle, ids) {
  const level = model.privacy_levels.find((l) => l.target_attack_rate === 0.1) ?? model.privacy_levels[0];
  const { dim, bits, clip, scale } = level;
  const rows = ids.map(bundle.row);
  const symbols = privatize(rows, { clip, scale, bits }, secureUniforms(ids.length * dim));
  const frames = privateFrames(symbols, dim, bits, model.max_frame_payload_bytes);
  const header = (overrides = {}) => ({
    request_id: "node-conformance",
    model: model.model_id,
    mechanism: { mechanism: "MECHANISM_BINOMIAL", dim, bits, clip, scale, ...overrides },
    sampling: { temperature: 0, max_new_tokens: 8 },
    bundle_digest: model.client_bundle_digest,
    level_id: level.id,
  });
  const messages = streamMessages(header(), frames);
  const { ids: generated, text, final } = folded(await generate(client, messages));
  check(generated.length === final.usage.generated_tokens && generated.length > 0, "generated tokens");
  check(typeof text === "string", "text");
  check(final.level_id === level.id, `served at ${final.level_id}, not ${level.id}`);
  // A server with a particle reader (its manifest says so) reads the prompt instead of
  // prepending the level's soft prompt (PROTOCOL §3.10), and says so; it leaves the prompt
  // unread only at a level that announces a probability of doing so. Otherwise the front-end
  // reads it after the soft prompt.
  const read = model.prompt_reading === "PROMPT_READING_PARTICLE";
  check(read || model.prompt_reading === "PROMPT_READING_FRONT_END", `announced ${model.prompt_reading}`);
  check(read === model.reader_particles > 0, `reader particles ${model.reader_particles}`);
  if (read) {
    check(final.soft_prompt === "SOFT_PROMPT_READER", `soft prompt ${final.soft_prompt}`);
    const readings = ["PROMPT_READING_PARTICLE"];
    if (level.ignore_probability > 0) readings.push("PROMPT_READING_IGNORED");
    check(readings.includes(final.reading), `read by the particle reader: ${final.reading}`);
    check(final._soft_prompt_mu === undefined, "the reader: no level soft prompt μ");
  } else {
    check(level.ignore_probability === 0, "no reader: every prompt read");
    const expected = level.soft_prompt ? "SOFT_PROMPT_USED" : "SOFT_PROMPT_NOT_TRAINED";
    check(final.soft_prompt === expected, `soft prompt ${final.soft_prompt}`);
    check(final.reading === "PROMPT_READING_FRONT_END", `reading ${final.reading}`);
    if (level.soft_prompt) check(final.soft_prompt_mu === level.mu, "the level's own soft prompt");
  }
  check(final.usage.prompt_tokens === ids.length, "prompt tokens");
  check(final.usage.payload_bits === ids.length * dim * bits, "payload bits");
  const sent = wireBytes(definition, messages);
  check(final.usage.wire_bytes_received === sent, `wire bytes: server ${final.usage.wire_bytes_received}, sent ${sent}`);
  // Parameters of no level: served, without a soft prompt, and the Final says so.
  const off = streamMessages({ ...header({ scale: scale * (1 + 1e-6) }), level_id: "" }, frames);
  const offFinal = folded(await generate(client, off)).final;
  const offExpected = read ? "SOFT_PROMPT_READER" : "SOFT_PROMPT_NO_LEVEL";
  check(offFinal.soft_prompt === offExpected && offFinal.level_id === "", "no level: no soft prompt");
  check(offFinal._soft_prompt_mu === undefined, "no level: no soft prompt μ");
  // A named level the header is not: refused.
  const mismatch = streamMessages(header({ scale: scale * (1 + 1e-6) }), frames);
  const status = await statusOf(client, mismatch);
  check(status === grpc.status.INVALID_ARGUMENT, `a named level unlike the header: status ${status}`);
  checks.push("private");
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const vectors = JSON.parse(readFileSync(args.vectors, "utf8"));
  checkVectors(vectors);
  const { definition, proto } = load();
  await checkHealth(proto, args.target);
  await checkReflection(proto, args.target);
  const client = new proto.del.v1.SplitInference(args.target, grpc.credentials.createInsecure());
  const manifest = await unary(client, "GetManifest", {});
  check(manifest.models.length === 1, "one served model");
  const model = manifest.models[0];
  checkManifest(model);
  const fetched = await fetchBundle(client, model.client_bundle_digest);
  checkBundle(fetched, model, vectors);
  const reference = JSON.parse(readFileSync(args.reference, "utf8"));
  if (args.raw) await checkRaw(client, definition, model, reference);
  // The vectors' token ids when this is their model, else the reference prompt's after BOS.
  const same = model.client_bundle_digest === vectors.bundle.digest;
  const ids = same ? vectors.tokenization.ids : reference.prompt_ids.slice(1);
  await checkPrivate(client, definition, model, fetched.bundle, ids);
  client.close();
  console.log(JSON.stringify({ ok: true, checks, server_version: manifest.server_version }));
}

main().catch((err) => {
  console.log(JSON.stringify({ ok: false, checks, error: `${err.message}${err.details ? `: ${err.details}` : ""}` }));
  process.exit(1);
});
