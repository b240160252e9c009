// A signature-verification worker of reverb's VerifyPool: it takes batches off reverb's thread,
// whose time goes to intake (Deno's WebCrypto verifies on its own blocking pool either way; see
// bench/RESULTS.md for what that means for throughput).
//
// Request: { id, n, data: ArrayBuffer, offsets: Uint32Array (n + 1), signatures: string[],
// keys: string[] } — claim i is data[offsets[i], offsets[i + 1]), signed by public key keys[i]
// (base64 of the raw 32 bytes). Reply: { id, results: Uint8Array } with 1 for a valid signature.

import { importPublicKey, verifyPayload } from "../core/mod.ts";

interface Request {
  id: number;
  n: number;
  data: ArrayBuffer;
  offsets: Uint32Array;
  signatures: string[];
  keys: string[];
}

const MAX_KEYS = 100_000;
const keys = new Map<string, Promise<CryptoKey | null>>();
const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<Request>) => void) | null;
  postMessage(message: unknown, transfer: Transferable[]): void;
};

function keyOf(b64: string): Promise<CryptoKey | null> {
  let key = keys.get(b64);
  if (key === undefined) {
    if (keys.size >= MAX_KEYS) keys.clear();
    key = importPublicKey(b64).catch(() => null);
    keys.set(b64, key);
  }
  return key;
}

scope.onmessage = async (e) => {
  const { id, n, data, offsets, signatures } = e.data;
  const bytes = new Uint8Array(data);
  const results = new Uint8Array(n);
  // Keys first (each imported once, then cached), then every verification at once.
  const resolved = await Promise.all(e.data.keys.map(keyOf));
  const pending: Promise<boolean>[] = [];
  const index: number[] = [];
  for (let i = 0; i < n; i++) {
    const key = resolved[i];
    if (key === null) continue;
    index.push(i);
    pending.push(
      verifyPayload(key, bytes.subarray(offsets[i], offsets[i + 1]), signatures[i])
        .catch(() => false),
    );
  }
  const ok = await Promise.all(pending);
  for (let j = 0; j < ok.length; j++) if (ok[j]) results[index[j]] = 1;
  scope.postMessage({ id, results }, [results.buffer]);
};
