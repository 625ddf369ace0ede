// ethers v6, unchanged, against the relay: JsonRpcProvider + JsonRpcSigner.
import {
  FetchRequest,
  JsonRpcProvider,
  JsonRpcSigner,
  Transaction,
  Wallet,
  getBytes,
  verifyMessage,
  verifyTypedData,
} from "ethers";
import { check, config, expect, expectEqual, expectRefusal, structTypes, typedData } from "./lib.mjs";

const CLIENT = "ethers";
// The bearer token goes in ethers' own header option: a FetchRequest for the URL.
function relay() {
  const request = new FetchRequest(config.relay);
  request.setHeader("Authorization", `Bearer ${config.token}`);
  return request;
}
const provider = new JsonRpcProvider(relay());
const payloadSizes = [];
provider.on("debug", (event) => {
  if (event.action === "sendRpcPayload") {
    payloadSizes.push(Array.isArray(event.payload) ? event.payload.length : 1);
  }
});

let signer;
await check(CLIENT, "getSigner (eth_accounts, eth_chainId)", async () => {
  signer = await provider.getSigner(config.address);
  const network = await provider.getNetwork();
  expectEqual(network.chainId, BigInt(config.chainId), "chain id");
  expectEqual(await signer.getAddress(), config.address, "signer address");
});

await check(CLIENT, "signMessage (text)", async () => {
  const message = "hello from ethers";
  const signature = await signer.signMessage(message);
  expectEqual(verifyMessage(message, signature), config.address, "verifyMessage");
  return { evidence: { kind: "message", text: message, signature } };
});

await check(CLIENT, "signMessage (bytes)", async () => {
  const message = getBytes("0x00ff10e2");
  const signature = await signer.signMessage(message);
  expectEqual(verifyMessage(message, signature), config.address, "verifyMessage");
  return { evidence: { kind: "message", hex: "0x00ff10e2", signature } };
});

for (const [name, data] of Object.entries(typedData)) {
  await check(CLIENT, `signTypedData ${name}`, async () => {
    const types = structTypes(data.types);
    const signature = await signer.signTypedData(data.domain, types, data.message);
    const recovered = verifyTypedData(data.domain, types, data.message, signature);
    expectEqual(recovered, config.address, "verifyTypedData");
    return { evidence: { kind: "typed", name, signature } };
  });
}

const base = { chainId: config.chainId, to: config.recipient, value: 1000n, gasLimit: 100000n };
const fees = { maxFeePerGas: 3_000_000_000n, maxPriorityFeePerGas: 1_000_000_000n };
const access = [{ address: config.recipient, storageKeys: ["0x" + "00".repeat(31) + "01"] }];
const auth = config.authorization;
const transactions = {
  "legacy (type 0)": { ...base, type: 0, nonce: 0, gasPrice: 2_000_000_000n },
  "EIP-2930 (type 1)": { ...base, type: 1, nonce: 1, gasPrice: 2_000_000_000n, accessList: access },
  "EIP-1559 (type 2)": { ...base, type: 2, nonce: 2, data: "0xdeadbeef", ...fees },
  "EIP-7702 (type 4)": {
    ...base, type: 4, nonce: 3, ...fees,
    authorizationList: [{
      address: auth.address, nonce: BigInt(auth.nonce), chainId: BigInt(auth.chainId),
      signature: { r: auth.r, s: auth.s, yParity: Number(auth.yParity) },
    }],
  },
  "contract creation": { ...base, to: null, type: 2, nonce: 4, data: "0x600a600c600039600a6000f3", ...fees },
};
for (const [name, tx] of Object.entries(transactions)) {
  await check(CLIENT, `signTransaction ${name} + Transaction.from`, async () => {
    const raw = await signer.signTransaction(tx);
    expect(typeof raw === "string", `eth_signTransaction answered ${typeof raw}, not a string`);
    const parsed = Transaction.from(raw);
    expectEqual(parsed.from, config.address, "Transaction.from(raw).from");
    expectEqual(parsed.type, tx.type, "type");
    expectEqual(parsed.nonce, tx.nonce, "nonce");
    expectEqual(parsed.chainId, BigInt(config.chainId), "chainId");
    expectEqual(parsed.to ?? "null", tx.to ?? "null", "to");
    if (tx.authorizationList) expectEqual(parsed.authorizationList.length, 1, "authorizations");
    return { evidence: { kind: "transaction", raw } };
  });
}

for (const size of [25, 100]) {
  await check(CLIENT, `batch of ${size} signMessage calls`, async () => {
    payloadSizes.length = 0;
    const messages = Array.from({ length: size }, (_, i) => `batched message ${i}`);
    const signatures = await Promise.all(messages.map((m) => signer.signMessage(m)));
    messages.forEach((m, i) => expectEqual(verifyMessage(m, signatures[i]), config.address, `verifyMessage #${i}`));
    expect(payloadSizes.includes(size), `ethers sent payloads of ${payloadSizes}, not one batch of ${size}`);
    return { detail: `one JSON-RPC batch of ${size}` };
  });
}

await check(CLIENT, "batch over the relay's limit: every call sees the reason", async () => {
  const eager = new JsonRpcProvider(relay(), config.chainId, { staticNetwork: true, batchMaxCount: 101 });
  const big = new JsonRpcSigner(eager, config.address);
  const results = await Promise.allSettled(Array.from({ length: 101 }, (_, i) => big.signMessage(`m${i}`)));
  eager.destroy();
  const reasons = results.map((r) => (r.status === "rejected" ? String(r.reason?.message) : "signed"));
  expect(reasons.every((r) => r.includes("exceeds the limit of 100")), `not every call saw the limit: ${reasons[0]}`);
  return { detail: reasons[0].slice(0, 140) };
});

await check(CLIENT, "error: no token, 401 unauthenticated", async () => {
  const anonymous = new JsonRpcProvider(config.relay, config.chainId, { staticNetwork: true });
  try {
    return { detail: await expectRefusal(() => anonymous.send("eth_accounts", []), "401") };
  } finally {
    anonymous.destroy();
  }
});

await check(CLIENT, "error: unknown account shows the relay's message", async () => {
  const stranger = new JsonRpcSigner(provider, Wallet.createRandom().address);
  const shown = await expectRefusal(() => stranger.signMessage("hi"), "unknown account");
  return { detail: shown };
});

await check(CLIENT, "error: nonce 2^64-1 refused (EIP-2681)", async () => {
  const tx = { ...base, type: 2, nonce: 2n ** 64n - 1n, ...fees };
  const shown = await expectRefusal(() => signer.signTransaction(tx), "EIP-2681");
  return { detail: shown };
});

await check(CLIENT, "error: signing method never forwarded (UNSUPPORTED_OPERATION)", async () => {
  try {
    await provider.send("personal_unlockAccount", [config.address, "", 0]);
  } catch (error) {
    expectEqual(error.code, "UNSUPPORTED_OPERATION", "ethers error code");
    return { detail: `${error.code}: ${error.info?.error?.message ?? ""}`.slice(0, 160) };
  }
  throw new Error("personal_unlockAccount was answered");
});

if (config.upstream) {
  await check(CLIENT, "sendTransaction via upstream (eth_sendTransaction), mined", async () => {
    const response = await signer.sendTransaction({ to: config.recipient, value: 12345n });
    const receipt = await response.wait();
    expectEqual(receipt.status, 1, "receipt status");
    expectEqual(receipt.from, config.address, "receipt from");
    return { evidence: { kind: "sent", hash: response.hash } };
  });
}

provider.destroy();
