// viem v2, unchanged, against the relay: a wallet client with a JSON-RPC account.
import {
  createPublicClient,
  createWalletClient,
  http,
  parseTransaction,
  recoverMessageAddress,
  recoverTransactionAddress,
  recoverTypedDataAddress,
} from "viem";
import { check, config, expectEqual, expectRefusal, structTypes, typedData } from "./lib.mjs";

const CLIENT = "viem";
// The bearer token goes in viem's own header option: the transport's fetchOptions.
const transport = http(config.relay, {
  retryCount: 0,
  fetchOptions: { headers: { Authorization: `Bearer ${config.token}` } },
});
const wallet = createWalletClient({ account: config.address, transport });
const publicClient = createPublicClient({ transport });

await check(CLIENT, "getAddresses, getChainId", async () => {
  const addresses = await wallet.getAddresses();
  expectEqual(addresses.map((a) => a.toLowerCase()).includes(config.address.toLowerCase()), true, "eth_accounts lists the account");
  expectEqual(await wallet.getChainId(), config.chainId, "eth_chainId");
});

for (const [label, message] of [["text", "hello from viem"], ["bytes", { raw: "0x00ff10e2" }]]) {
  await check(CLIENT, `signMessage (${label})`, async () => {
    const signature = await wallet.signMessage({ message });
    expectEqual(await recoverMessageAddress({ message, signature }), config.address, "recoverMessageAddress");
    const evidence = typeof message === "string" ? { text: message } : { hex: message.raw };
    return { evidence: { kind: "message", ...evidence, signature } };
  });
}

for (const [name, data] of Object.entries(typedData)) {
  await check(CLIENT, `signTypedData ${name}`, async () => {
    const request = { domain: data.domain, types: structTypes(data.types), primaryType: data.primaryType, message: data.message };
    const signature = await wallet.signTypedData(request);
    expectEqual(await recoverTypedDataAddress({ ...request, signature }), config.address, "recoverTypedDataAddress");
    return { evidence: { kind: "typed", name, signature } };
  });
}

const base = { to: config.recipient, value: 1000n, gas: 100000n };
const fees = { maxFeePerGas: 3_000_000_000n, maxPriorityFeePerGas: 1_000_000_000n };
const auth = config.authorization;
const transactions = {
  "legacy": { ...base, type: "legacy", nonce: 0, gasPrice: 2_000_000_000n },
  "eip2930": {
    ...base, type: "eip2930", nonce: 1, gasPrice: 2_000_000_000n,
    accessList: [{ address: config.recipient, storageKeys: ["0x" + "00".repeat(31) + "01"] }],
  },
  "eip1559": { ...base, type: "eip1559", nonce: 2, data: "0xdeadbeef", ...fees },
  "eip4844": {
    ...base, type: "eip4844", nonce: 3, ...fees, maxFeePerBlobGas: 7n,
    blobVersionedHashes: ["0x01" + "ab".repeat(31)],
  },
  "eip7702": {
    ...base, type: "eip7702", nonce: 4, ...fees,
    authorizationList: [{
      address: auth.address, chainId: Number(auth.chainId), nonce: Number(auth.nonce),
      r: auth.r, s: auth.s, yParity: Number(auth.yParity),
    }],
  },
  "contract creation": { ...base, to: undefined, type: "eip1559", nonce: 5, data: "0x600a600c600039600a6000f3", ...fees },
};
for (const [name, tx] of Object.entries(transactions)) {
  await check(CLIENT, `signTransaction ${name} + parseTransaction`, async () => {
    const raw = await wallet.signTransaction({ chain: null, ...tx });
    const parsed = parseTransaction(raw);
    expectEqual(parsed.type, tx.type, "type");
    expectEqual(parsed.nonce, tx.nonce, "nonce");
    expectEqual(parsed.chainId, config.chainId, "chainId");
    expectEqual(parsed.to ?? "none", tx.to ?? "none", "to");
    expectEqual(await recoverTransactionAddress({ serializedTransaction: raw }), config.address, "recoverTransactionAddress");
    return { evidence: { kind: "transaction", raw } };
  });
}

await check(CLIENT, "error: no token, 401 unauthenticated", async () => {
  const anonymous = createPublicClient({ transport: http(config.relay, { retryCount: 0 }) });
  return { detail: await expectRefusal(() => anonymous.getChainId(), "401") };
});

await check(CLIENT, "error: unknown account shows the relay's message", async () => {
  const stranger = "0x" + "5a".repeat(20);
  const shown = await expectRefusal(() => wallet.signMessage({ account: stranger, message: "hi" }), "unknown account");
  return { detail: shown };
});

await check(CLIENT, "error: nonce 2^64-1 refused (EIP-2681)", async () => {
  // viem types a nonce as a JS number, which cannot hold 2^64-1: send the JSON-RPC call.
  const request = {
    from: config.address, to: config.recipient, type: "0x2", chainId: `0x${config.chainId.toString(16)}`,
    nonce: "0xffffffffffffffff", gas: "0x186a0", maxFeePerGas: "0xb2d05e00", maxPriorityFeePerGas: "0x3b9aca00",
  };
  const shown = await expectRefusal(() => wallet.request({ method: "eth_signTransaction", params: [request] }), "EIP-2681");
  return { detail: shown };
});

if (config.upstream) {
  await check(CLIENT, "sendTransaction via upstream (eth_sendTransaction), mined", async () => {
    const hash = await wallet.sendTransaction({ chain: null, to: config.recipient, value: 4321n });
    const receipt = await publicClient.waitForTransactionReceipt({ hash, pollingInterval: 100 });
    expectEqual(receipt.status, "success", "receipt status");
    expectEqual(receipt.from, config.address, "receipt from");
    return { evidence: { kind: "sent", hash } };
  });
}
