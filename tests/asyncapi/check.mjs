// Checks docs/asyncapi.yaml and the frames seen on the wire against it.
//
//   node tests/asyncapi/check.mjs FRAME_DIR [--spec docs/asyncapi.yaml]
//
// 1. Parses and validates the document as AsyncAPI 3 (@asyncapi/parser): any error diagnostic
//    fails the check (warnings are printed).
// 2. Builds one JSON Schema validator (ajv) per protocol version (channel `v1`/`v2`),
//    direction (operation action `send`: server frames, `receive`: client frames) and frame
//    `type` (the payload's `properties.type.const`), checks every message example against
//    its own payload, and checks that the close and error codes (`x-close-codes`,
//    `x-error-codes`, schemas `CloseCode`, `ErrorCode`) agree with PROTOCOL.md's tables.
// 3. Reads every `*.jsonl` file in FRAME_DIR, one
//    `{"from":"server"|"client","protocol":"v1"|"v2","frame":<object>}` per line (the Rust
//    integration tests log what the server sent, the SDK tests what the SDK sent), and
//    validates each frame. Fails on a frame of unknown type, one that does not match its
//    schema, a malformed line, or when there are no frames at all; prints counts per
//    protocol, direction and type.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser, fromFile } from '@asyncapi/parser';
import Ajv from 'ajv';

const here = dirname(fileURLToPath(import.meta.url));
const MAX_REPORTED = 10;

function usage(message) {
  console.error(`check.mjs: ${message}\nusage: node check.mjs FRAME_DIR [--spec PATH]`);
  process.exit(2);
}

const args = process.argv.slice(2);
let specPath = resolve(here, '../../docs/asyncapi.yaml');
let frameDir;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--spec') {
    specPath = resolve(args[++i] ?? usage('--spec needs a path'));
  } else if (frameDir === undefined) {
    frameDir = resolve(args[i]);
  } else {
    usage(`unexpected argument ${args[i]}`);
  }
}
if (frameDir === undefined) usage('no frame directory given');

// ---------------------------------------------------------------- 1. the document

const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), specPath).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics.filter((d) => d.severity <= 1)) {
  const where = d.path?.length ? ` at ${d.path.join('.')}` : '';
  console.error(`${severities[d.severity]}: ${d.code}: ${d.message}${where}`);
}
if (errors.length > 0 || !document) {
  console.error(`FAIL: ${specPath} is not a valid AsyncAPI document (${errors.length} errors)`);
  process.exit(1);
}
if (!document.version().startsWith('3.')) {
  console.error(`FAIL: ${specPath} is AsyncAPI ${document.version()}, not 3.x`);
  process.exit(1);
}
console.log(`ok: ${specPath} is valid AsyncAPI ${document.version()}` +
  ` (${diagnostics.filter((d) => d.severity === 1).length} warnings)`);

// ---------------------------------------------------------------- 2. the validators

// The parser annotates every schema it dereferenced with `x-parser-*` keys; ajv's strict mode
// (kept on, so a misspelt keyword in the document fails loudly) refuses unknown keywords, so
// the specification extensions (`x-…`) are dropped from the copy given to ajv.
function withoutExtensions(value) {
  if (Array.isArray(value)) return value.map(withoutExtensions);
  if (value === null || typeof value !== 'object') return value;
  const out = {};
  for (const [key, inner] of Object.entries(value)) {
    if (!key.startsWith('x-')) out[key] = withoutExtensions(inner);
  }
  return out;
}

// strictRequired is off only because a conditional `then: {required: [...]}` names properties
// declared beside it, not inside it; the top-level `required` lists are checked below instead.
const ajv = new Ajv({ strict: true, strictRequired: false, allErrors: true });
const directions = { send: 'server', receive: 'client' };
const validators = new Map(); // "v1 server join" -> validate function
const schemasByKey = new Map(); // "v1 server join" -> its payload schema
let documentProblems = 0;
let examples = 0;

for (const operation of document.operations().all()) {
  const from = directions[operation.action()];
  const channels = operation.channels().all();
  if (channels.length !== 1) {
    console.error(`FAIL: operation ${operation.id()} must name exactly one channel (v1 or v2)`);
    documentProblems++;
    continue;
  }
  const protocol = channels[0].id();
  for (const message of operation.messages().all()) {
    const schema = withoutExtensions(message.payload()?.json());
    const type = schema?.properties?.type?.const;
    const key = `${protocol} ${from} ${type}`;
    if (typeof type !== 'string') {
      console.error(`FAIL: message ${protocol}/${message.id()} has no payload properties.type.const`);
      documentProblems++;
      continue;
    }
    if (validators.has(key)) {
      console.error(`FAIL: two messages for ${key} (one message per version, direction and type)`);
      documentProblems++;
      continue;
    }
    const undeclared = (schema.required ?? []).filter((name) => !(name in (schema.properties ?? {})));
    if (undeclared.length > 0) {
      console.error(`FAIL: ${key} requires undeclared properties: ${undeclared.join(', ')}`);
      documentProblems++;
      continue;
    }
    let validate;
    try {
      validate = ajv.compile(schema);
    } catch (error) {
      console.error(`FAIL: the payload of ${key} is not a valid JSON Schema: ${error.message}`);
      documentProblems++;
      continue;
    }
    validators.set(key, validate);
    schemasByKey.set(key, schema);
    // The examples are the document's own claims about the wire: each must match its schema.
    for (const example of message.examples().all()) {
      examples++;
      if (!validate(example.payload())) {
        console.error(`FAIL: an example of ${key} does not match its payload: ` +
          `${show(example.payload())}\n${explain(validate.errors)}`);
        documentProblems++;
      }
    }
  }
}
for (const protocol of ['v1', 'v2']) {
  for (const from of ['server', 'client']) {
    if (![...validators.keys()].some((key) => key.startsWith(`${protocol} ${from} `))) {
      console.error(`FAIL: the document describes no ${protocol} ${from} frames`);
      documentProblems++;
    }
  }
}

// The close and error codes are written twice, as tables in PROTOCOL.md (for people) and here
// (for machines): the codes, close reasons and v1 close codes must agree.
const protocolMd = readFileSync(resolve(dirname(specPath), 'PROTOCOL.md'), 'utf8');
function tableRows(heading) {
  const section = protocolMd.split(`\n${heading}\n`)[1];
  if (section === undefined) {
    console.error(`FAIL: PROTOCOL.md has no "${heading}" section`);
    documentProblems++;
    return [];
  }
  const lines = section.split('\n');
  const start = lines.findIndex((line) => line.startsWith('|'));
  const rows = [];
  for (const line of lines.slice(start + 2)) { // past the header and its |---| line
    if (!line.startsWith('|')) break;
    rows.push(line.replace(/^\||\|$/g, '').split(' | ').map((cell) => cell.trim().replace(/^`|`$/g, '')));
  }
  return rows;
}
function agree(what, documented, described) {
  const a = JSON.stringify(documented);
  const b = JSON.stringify(described);
  if (a !== b) {
    console.error(`FAIL: ${what} differ:\n  PROTOCOL.md:   ${a}\n  asyncapi.yaml: ${b}`);
    documentProblems++;
  }
}
const root = document.json();
const schemas = root.components?.schemas ?? {};
const closeRows = tableRows('## Close codes').map(([code, reason]) => [Number(code), reason]);
agree('the close codes and reasons', closeRows,
  (root['x-close-codes'] ?? []).map(({ code, reason }) => [code, reason]));
agree('the close codes', closeRows.map(([code]) => code), schemas.CloseCode?.enum);
const errorRows = tableRows('## Error codes')
  .map(([code, , close]) => [code, close === '—' ? null : Number(close)]);
agree('the error codes and their v1 close codes', errorRows,
  (root['x-error-codes'] ?? []).map(({ code, v1Close }) => [code, v1Close]));
agree('the error codes', errorRows.map(([code]) => code), schemas.ErrorCode?.enum);

if (documentProblems > 0) {
  console.error(`FAIL: ${documentProblems} problem(s) in the document`);
  process.exit(1);
}
console.log(`ok: ${validators.size} frame schemas, ${examples} examples match them`);

// ---------------------------------------------------------------- 3. the frames

// A frame as printed in a report: long strings (tokens, padded bodies) cut, the whole cut too.
function show(frame) {
  const cut = (value) => {
    if (typeof value === 'string') {
      return value.length > 60 ? `${value.slice(0, 60)}…(${value.length} chars)` : value;
    }
    if (Array.isArray(value)) {
      const items = value.slice(0, 5).map(cut);
      return value.length > 5 ? [...items, `…(${value.length} items)`] : items;
    }
    if (value && typeof value === 'object') {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, cut(v)]));
    }
    return value;
  };
  const text = JSON.stringify(cut(frame));
  return text.length > 400 ? `${text.slice(0, 400)}…` : text;
}

function explain(errors) {
  return (errors ?? [])
    .slice(0, 6)
    .map((e) => {
      const extra = e.keyword === 'additionalProperties' ? ` (${e.params.additionalProperty})` : '';
      return `    ${e.instancePath || '/'} ${e.message}${extra}`;
    })
    .join('\n');
}

// The server's fields come in a fixed order (PROTOCOL.md: GarinChat's `type`, `body`,
// `username`, `totalUsers`, then `userId`, then the extensions; in v2 `room` right after `type`
// and `id`), which GarinChat clients that compare bytes rely on. A closed schema lists its
// properties in that order; a frame (and any closed object inside it) must follow it.
function outOfOrder(value, schema) {
  if (Array.isArray(value)) {
    for (const item of value) {
      const disorder = outOfOrder(item, schema?.items);
      if (disorder) return disorder;
    }
    return null;
  }
  if (value === null || typeof value !== 'object' || !schema?.properties) return null;
  const order = Object.keys(schema.properties);
  let last = -1;
  for (const key of Object.keys(value)) {
    const at = order.indexOf(key);
    if (at === -1) continue; // an undocumented field: the schema reports it
    if (at < last) return `"${key}" after "${order[last]}" (the document's order: ${order.join(', ')})`;
    last = at;
  }
  for (const [key, inner] of Object.entries(value)) {
    const disorder = outOfOrder(inner, schema.properties[key]);
    if (disorder) return disorder;
  }
  return null;
}

let files;
try {
  if (!statSync(frameDir).isDirectory()) throw new Error('not a directory');
  files = readdirSync(frameDir).filter((name) => name.endsWith('.jsonl')).sort();
} catch (error) {
  console.error(`FAIL: cannot read the frame directory ${frameDir}: ${error.message}`);
  process.exit(1);
}

const counts = new Map(); // "v1 server join" -> frames
const failures = [];
let total = 0;
let bad = 0;

function fail(where, reason, frame, errors) {
  bad++;
  if (failures.length < MAX_REPORTED) {
    failures.push(`${where}: ${reason}\n    frame: ${show(frame)}` + (errors ? `\n${explain(errors)}` : ''));
  }
}

for (const file of files) {
  const lines = readFileSync(join(frameDir, file), 'utf8').split('\n');
  lines.forEach((line, index) => {
    if (line.trim() === '') return;
    const where = `${file}:${index + 1}`;
    let entry;
    try {
      entry = JSON.parse(line);
    } catch {
      fail(where, 'not a JSON line', line);
      return;
    }
    total++;
    const { from, protocol, frame } = entry ?? {};
    if (protocol === 'unknown') {
      // tests/common logs this for a socket its Client constructors did not open: which
      // version's schemas apply cannot be known, and a frame left unchecked must not pass.
      counts.set('unknown protocol', (counts.get('unknown protocol') ?? 0) + 1);
      fail(where, 'a frame on a socket of unknown protocol (a test built its own Client { ws }: ' +
        'open it with Client::connect_with_protocols or TestServer::connect_v2 instead)', frame);
      return;
    }
    if (!['server', 'client'].includes(from) || !['v1', 'v2'].includes(protocol)) {
      fail(where, 'not {"from":"server"|"client","protocol":"v1"|"v2","frame":…}', entry);
      return;
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) {
      fail(where, `a ${protocol} ${from} text frame that is not a JSON object`, frame);
      return;
    }
    const key = `${protocol} ${from} ${frame.type}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    const validate = validators.get(key);
    if (!validate) {
      fail(where, `a ${protocol} ${from} frame of a type the document does not describe`, frame);
    } else if (!validate(frame)) {
      fail(where, `a ${key} frame that does not match its schema`, frame, validate.errors);
    } else if (from === 'server') {
      const disorder = outOfOrder(frame, schemasByKey.get(key));
      if (disorder) fail(where, `a ${key} frame with its fields out of order: ${disorder}`, frame);
    }
  });
}

console.log(`\nframes in ${frameDir} (${files.length} files), per protocol, direction and type:`);
for (const key of [...counts.keys()].sort()) {
  console.log(`  ${key.padEnd(28)} ${counts.get(key)}`);
}
const unexercised = [...validators.keys()].filter((key) => !counts.has(key)).sort();
if (unexercised.length > 0) {
  console.log(`  (no frame of: ${unexercised.join(', ')})`);
}

if (total === 0) {
  console.error(`FAIL: no frames in ${frameDir}: the tests that log them did not run`);
  process.exit(1);
}
if (bad > 0) {
  console.error(`\nFAIL: ${bad} of ${total} frames do not match docs/asyncapi.yaml; the first ${failures.length}:`);
  for (const failure of failures) console.error(failure);
  process.exit(1);
}
console.log(`ok: all ${total} frames match docs/asyncapi.yaml`);
