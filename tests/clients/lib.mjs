// Shared by the client scripts that tests/clients/test_clients.py runs.
//
// Input: one JSON object in argv[2] (relay URL, account address, chain id, ...).
// Output: one JSON line per check on stdout: {client, operation, ok, ms, detail, evidence}.
// A failed check is a line with ok=false, never an exception: the Python side fails the
// test for it and prints the table. `evidence` carries what the check signed (raw
// transactions, signatures, hashes) so Python can verify it again with eth-account.
import { readFileSync } from "node:fs";

export const config = JSON.parse(process.argv[2]);
export const typedData = JSON.parse(
  readFileSync(new URL("./typed_data.json", import.meta.url), "utf8"),
);

export async function check(client, operation, run) {
  const started = performance.now();
  let line;
  try {
    const result = (await run()) ?? {};
    line = { ok: true, detail: result.detail ?? "", evidence: result.evidence ?? null };
  } catch (error) {
    line = { ok: false, detail: describe(error), evidence: null };
  }
  const ms = Math.round(performance.now() - started);
  process.stdout.write(JSON.stringify({ client, operation, ms, ...line }) + "\n");
}

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

export function expectEqual(actual, expected, what) {
  const a = typeof actual === "string" ? actual.toLowerCase() : String(actual);
  const e = typeof expected === "string" ? expected.toLowerCase() : String(expected);
  if (a !== e) throw new Error(`${what}: got ${actual}, expected ${expected}`);
}

// An error the relay answered must reach the caller: the phrase must be in what the
// client puts in front of its user (ethers' and viem's error.message); answers a summary.
export async function expectRefusal(run, phrase) {
  try {
    await run();
  } catch (error) {
    const shown = String(error?.message ?? error);
    if (!shown.includes(phrase)) {
      throw new Error(`refused, but "${phrase}" is not in what the client shows: ${describe(error)}`);
    }
    return describe(error);
  }
  throw new Error(`expected a refusal containing "${phrase}"`);
}

// What a client's error says, in one line: viem's shortMessage and details, ethers'
// code, shortMessage and the JSON-RPC error's own message.
export function describe(error) {
  const parts = [];
  if (error?.code && typeof error.code === "string") parts.push(error.code);
  if (error?.shortMessage) parts.push(error.shortMessage);
  if (error?.details) parts.push(`Details: ${error.details}`);
  const rpcMessage = error?.error?.message ?? error?.info?.error?.message;
  if (rpcMessage) parts.push(`error.message: ${rpcMessage}`);
  if (!parts.length) parts.push(String(error?.message ?? error));
  return parts.join(" | ").replace(/\s+/g, " ").slice(0, 600);
}

// The EIP-712 types without EIP712Domain (ethers and viem derive the domain type).
export function structTypes(types) {
  const { EIP712Domain: _, ...rest } = types;
  return rest;
}
