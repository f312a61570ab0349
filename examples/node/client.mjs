#!/usr/bin/env node
// A modelrunner client in plain Node.js: health check, package upload, model metadata, and the
// same prediction over Arrow Flight and over the Open Inference Protocol (KServe V2), compared
// with an expected output. docs/wire-format.md describes every message used here.
//
//   node client.mjs CONTROL_ADDRESS PACKAGE_ZIP INPUT_NPY EXPECTED_NPY [--tolerance 1e-4]
//
// Progress goes to stderr; the last line on stdout is one JSON object with the results.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import {
  Field, FixedSizeList, Float32, Message, RecordBatch, Schema, Struct, Table,
  makeData, tableFromIPC, tableToIPC,
} from 'apache-arrow';
import protobuf from 'protobufjs';

const PROTOS = fileURLToPath(new URL('../../protos/', import.meta.url));
const CHUNK_BYTES = 1024 * 1024; // control.proto: "up to 1 MiB each is a good size"
const DEADLINE_MS = 120_000;
// Outputs of large images exceed the 4 MiB that grpc-js receives by default (it sends any size).
const CHANNEL_OPTIONS = { 'grpc.max_receive_message_length': -1 };
const log = (...args) => console.error(...args);
const deadline = () => ({ deadline: Date.now() + DEADLINE_MS });

// gRPC services, with the .proto files' snake_case field names.
const services = grpc.loadPackageDefinition(protoLoader.loadSync(
  ['grpc/health/v1/health.proto', 'modelrunner/v1/control.proto', 'arrow/flight/Flight.proto',
    'modelrunner/open_inference/grpc_predict_v2.proto'],
  { keepCase: true, longs: Number, enums: String, defaults: true, includeDirs: [PROTOS] },
));

// Messages that travel inside `bytes` fields (the Flight command, app_metadata, error trailers)
// are encoded and decoded with protobufjs: proto-loader only builds what gRPC methods take.
const messages = new protobuf.Root();
messages.resolvePath = (_origin, target) => join(PROTOS, target);
messages.loadSync('modelrunner/v1/runtime.proto', { keepCase: true });
const PredictCommand = messages.lookupType('modelrunner.v1.PredictCommand');
const FrameResult = messages.lookupType('modelrunner.v1.FrameResult');
const ErrorDetail = messages.lookupType('modelrunner.v1.ErrorDetail');

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(),
      (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// --- tensors in .npy files ----------------------------------------------------------------------
// Float32Array uses the host's byte order; .npy '<f4', Arrow and V2 raw contents are little
// endian, as is every host Node runs on in practice (x86-64, arm64).
function readNpy(path) {
  const bytes = readFileSync(path);
  const lengthBytes = bytes[6] === 1 ? 2 : 4; // format 1.0: uint16 header length, 2.0+: uint32
  const headerLength = lengthBytes === 2 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = 8 + lengthBytes + headerLength;
  const header = bytes.toString('latin1', 8 + lengthBytes, start);
  if (!header.includes("'descr': '<f4'") || header.includes("'fortran_order': True")) {
    throw new Error(`${path}: only float32 little-endian C-order arrays are supported: ${header}`);
  }
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim());
  // Copied into a buffer of its own: a Float32Array must start at a multiple of 4 bytes.
  const values = bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + bytes.length);
  return { shape: shape.map(Number), values: new Float32Array(values) };
}

function maxAbsDifference(got, expected) {
  if (got.shape.join() !== expected.shape.join()) {
    throw new Error(`output shape ${got.shape} differs from the expected ${expected.shape}`);
  }
  let max = 0;
  for (let i = 0; i < got.values.length; i++) {
    max = Math.max(max, Math.abs(got.values[i] - expected.values[i]));
  }
  return max;
}

// --- control plane ------------------------------------------------------------------------------
function uploadPackage(control, zipPath) {
  const data = readFileSync(zipPath);
  const sha256 = createHash('sha256').update(data).digest('hex');
  return new Promise((resolve, reject) => {
    const call = control.UploadPackage(deadline(),
      (error, response) => (error ? reject(error) : resolve(response)));
    call.write({ header: { filename: basename(zipPath), size_bytes: data.length, sha256 } });
    for (let start = 0; start < data.length; start += CHUNK_BYTES) {
      call.write({ chunk: data.subarray(start, start + CHUNK_BYTES) });
    }
    call.end();
  });
}

// AddModel streams progress events (unpack, hash, ...: done of total) and ends with the model.
function addModel(control, uploadId) {
  return new Promise((resolve, reject) => {
    let result;
    const call = control.AddModel({ source: { upload_id: uploadId } }, deadline());
    call.on('data', (event) => { result = event.result ?? result; });
    call.on('error', reject);
    call.on('end', () => resolve(result));
  });
}

// A runtime listening on all interfaces announces 0.0.0.0: reach it on the control service's host.
function flightAddress(uri, controlAddress) {
  const { protocol, hostname, port } = new URL(uri);
  if (protocol !== 'grpc:') throw new Error(`this example speaks plaintext only, not ${uri}`);
  const controlHost = controlAddress.slice(0, controlAddress.lastIndexOf(':'));
  return `${hostname === '0.0.0.0' ? controlHost : hostname}:${port}`;
}

// --- Arrow Flight -------------------------------------------------------------------------------
// One sample as a one-row record batch with one arrow.fixed_shape_tensor column. apache-arrow
// does not know that extension type: its storage type (FixedSizeList<float32>) with the two
// extension metadata keys, exactly as pyarrow writes them, make it one on the wire.
function tensorBatch(name, { shape, values }, dimNames) {
  const extension = dimNames.length === shape.length ? { shape, dim_names: dimNames } : { shape };
  const type = new FixedSizeList(values.length, new Field('item', new Float32(), true));
  const field = new Field(name, type, true, new Map([
    ['ARROW:extension:name', 'arrow.fixed_shape_tensor'],
    ['ARROW:extension:metadata', JSON.stringify(extension)],
  ]));
  const items = makeData({ type: type.children[0].type, length: values.length, data: values });
  const column = makeData({ type, length: 1, nullCount: 0, child: items });
  const schema = new Schema([field]);
  const struct = new Struct(schema.fields);
  const data = makeData({ type: struct, length: 1, nullCount: 0, children: [column] });
  return new RecordBatch(schema, data);
}

// An IPC stream is a row of encapsulated messages: 0xFFFFFFFF (continuation marker), an int32
// length, the Message flatbuffer, the body; it ends with a zero length. Flight frames messages
// itself, so a FlightData carries only the flatbuffer (data_header) and the body (data_body).
function* flightDataFromIPC(stream) {
  const view = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
  for (let offset = 0; offset < stream.byteLength;) {
    const headerLength = view.getInt32(offset + 4, true);
    if (headerLength === 0) return;
    const header = stream.subarray(offset + 8, offset + 8 + headerLength);
    const bodyStart = offset + 8 + headerLength;
    const bodyEnd = bodyStart + Number(Message.decode(header).bodyLength);
    yield { data_header: header, data_body: stream.subarray(bodyStart, bodyEnd) };
    offset = bodyEnd;
  }
}

// The reverse: frame each answer's header and body again. The length is padded to a multiple of
// 8 so that every body starts 8-byte aligned, as the IPC format requires.
function ipcFromFlightData(answers) {
  const parts = [];
  for (const { data_header: header, data_body: body } of answers) {
    if (header.length === 0) continue; // a metadata-only message (progress)
    const padding = (8 - (header.length % 8)) % 8;
    const prefix = Buffer.alloc(8);
    prefix.writeUInt32LE(0xffffffff, 0);
    prefix.writeInt32LE(header.length + padding, 4);
    parts.push(prefix, header, Buffer.alloc(padding), body);
  }
  parts.push(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
  return Buffer.concat(parts);
}

// A one-sample DoExchange: the first message carries the CMD descriptor with the input schema;
// closing our side tells the runtime that the sample is complete.
function exchange(flight, command, [first, ...rest]) {
  return new Promise((resolve, reject) => {
    const answers = [];
    const call = flight.DoExchange(deadline());
    call.on('data', (answer) => answers.push(answer));
    call.on('error', reject);
    call.on('end', () => resolve(answers));
    call.write({ ...first, flight_descriptor: { type: 'CMD', cmd: command } });
    rest.forEach((data) => call.write(data));
    call.end();
  });
}

async function predictFlight(flight, modelId, inputName, tensor, dimNames) {
  const command = PredictCommand.encode({ model_id: modelId }).finish();
  const stream = tableToIPC(new Table(tensorBatch(inputName, tensor, dimNames)), 'stream');
  const answers = await exchange(flight, command, [...flightDataFromIPC(stream)]);
  for (const { app_metadata: metadata } of answers) {
    const { error } = metadata.length ? FrameResult.decode(metadata) : {};
    if (error) throw Object.assign(new Error(error.message), { code: grpc.status[error.code] });
  }
  const table = tableFromIPC(ipcFromFlightData(answers));
  return table.schema.fields.map((field) => ({
    name: field.name,
    shape: JSON.parse(field.metadata.get('ARROW:extension:metadata')).shape,
    values: table.getChild(field.name).get(0).toArray(),
  }));
}

// --- Open Inference Protocol (V2) ---------------------------------------------------------------
async function predictV2(inference, modelId, inputName, { shape, values }) {
  const response = await unary(inference, 'ModelInfer', {
    model_name: modelId,
    inputs: [{ name: inputName, datatype: 'FP32', shape }],
    raw_input_contents: [Buffer.from(values.buffer, values.byteOffset, values.byteLength)],
  });
  return response.outputs.map((output, i) => ({
    name: output.name,
    shape: output.shape,
    // Copied: a received bytes field may start anywhere, a Float32Array at a multiple of 4 only.
    values: new Float32Array(new Uint8Array(response.raw_output_contents[i]).buffer),
  }));
}

// --- results and errors -------------------------------------------------------------------------
async function warmRoundTrip(plane, predict, expected, repeat) {
  await predict(); // the first prediction loads the model on the runtime
  const times = [];
  let output;
  for (let i = 0; i < repeat; i += 1) {
    const start = performance.now();
    [output] = await predict();
    times.push(performance.now() - start);
  }
  const round = (value) => Math.round(value * 10) / 10;
  const ms = round(times.sort((a, b) => a - b)[Math.floor(times.length / 2)]);
  const maxAbsDiff = maxAbsDifference(output, expected);
  log(`${plane}: ${output.name} ${output.shape}, max abs diff ${maxAbsDiff}, ${ms} ms`);
  return { max_abs_diff: maxAbsDiff, ms, total_ms: round(times.reduce((a, b) => a + b, 0)) };
}

// Both planes put an ErrorDetail (code, exception type, message, details) in this trailer. Its
// message is the plain one: pyarrow prefixes a Flight status message with the code and appends
// a Python traceback to it.
function describeError(error) {
  const code = grpc.status[error.code] ?? error.code;
  const trailer = error.metadata?.get('modelrunner-error-bin')[0];
  const detail = trailer ? ErrorDetail.decode(trailer) : {};
  return { code, type: detail.type, message: detail.message ?? error.details ?? error.message };
}

async function expectError(plane, predict) {
  try {
    await predict();
    return { code: 'OK' };
  } catch (error) {
    const { code, type, message } = describeError(error);
    log(`  ${plane}: ${code} (${type}): ${message}`);
    return { code, message };
  }
}

// --- the walk-through ---------------------------------------------------------------------------
async function main() {
  const { values: options, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      tolerance: { type: 'string', default: '1e-4' },
      repeat: { type: 'string', default: '1' }, // timed round trips per plane (median reported)
    },
  });
  if (positionals.length !== 4) {
    log('usage: node client.mjs CONTROL_ADDRESS PACKAGE_ZIP INPUT_NPY EXPECTED_NPY'
      + ' [--tolerance 1e-4] [--repeat 1]');
    process.exitCode = 2;
    return;
  }
  const [address, zipPath, inputPath, expectedPath] = positionals;
  const tolerance = Number(options.tolerance);
  const repeat = Math.max(1, Number(options.repeat));
  const credentials = grpc.credentials.createInsecure();
  const { ControlService } = services.modelrunner.v1;

  const health = new services.grpc.health.v1.Health(address, credentials);
  const { status } = await unary(health, 'Check', { service: '' });
  log(`1. health: ${status}`);

  const control = new ControlService(address, credentials, CHANNEL_OPTIONS);
  const upload = await uploadPackage(control, zipPath);
  const { model: added, created } = await addModel(control, upload.upload_id);
  log(`2. uploaded ${upload.size_bytes} bytes: model ${added.id} (${created ? 'new' : 'known'})`);

  const { model } = await unary(control, 'DescribeModel', { model_id: added.id });
  const [input] = model.inputs;
  const dimNames = input.axes.map((axis) => axis.id);
  const route = await unary(control, 'GetModelRoute', { model_id: model.id });
  log(`3. ${model.name}: input ${input.id} (${dimNames}), `
    + `outputs ${model.outputs.map((output) => output.id)}, runtimes ${route.flight_uris}`);

  const tensor = readNpy(inputPath);
  const expected = readNpy(expectedPath);
  const flight = new services.arrow.flight.protocol.FlightService(
    flightAddress(route.flight_uris[0], address), credentials, CHANNEL_OPTIONS);
  const inference = new services.inference.GRPCInferenceService(
    address, credentials, CHANNEL_OPTIONS);
  const flightResult = await warmRoundTrip('4. Flight',
    () => predictFlight(flight, model.id, input.id, tensor, dimNames), expected, repeat);
  const v2Result = await warmRoundTrip('5. V2',
    () => predictV2(inference, model.id, input.id, tensor), expected, repeat);

  // Two channels more than the model takes: refused before anything is computed.
  const channel = input.axes.findIndex((axis) => axis.type === 'channel');
  const shape = tensor.shape.map((size, i) => (i === channel ? size + 2 : size));
  const wrong = { shape, values: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
  log(`6. a ${shape} tensor:`);
  flightResult.error = await expectError('Flight',
    () => predictFlight(flight, model.id, input.id, wrong, dimNames));
  v2Result.error = await expectError('V2', () => predictV2(inference, model.id, input.id, wrong));

  const results = { model_id: model.id, tolerance, flight: flightResult, v2: v2Result };
  console.log(JSON.stringify(results));
  for (const client of [health, control, flight, inference]) client.close();
  if (!(flightResult.max_abs_diff <= tolerance && v2Result.max_abs_diff <= tolerance)) {
    log(`outputs differ from ${expectedPath} by more than ${tolerance}`);
    process.exitCode = 1;
  }
}

main().catch((error) => {
  log(error.code === undefined ? error : describeError(error));
  process.exitCode = 2;
});
