// A signature-verification worker of reverb's VerifyPool. Deno's WebCrypto runs Ed25519 on the
// calling thread, so verifying in workers is what puts more than one core on signatures.
//
// Request: { id, n, data: ArrayBuffer, offsets: Uint32Array (n + 1), signatures: string[],
// keys: string[] } — claim i is data[offsets[i], offsets[i + 1]), signed by public key keys[i]
// (base64 of the raw 32 bytes). Reply: { id, results: Uint8Array } with 1 for a valid signature.

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

function decode(b64: string): Uint8Array | null {
  try {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

function keyOf(b64: string): Promise<CryptoKey | null> {
  let key = keys.get(b64);
  if (key === undefined) {
    if (keys.size >= MAX_KEYS) keys.clear();
    const raw = decode(b64);
    key = raw && raw.length === 32
      ? crypto.subtle.importKey("raw", raw as BufferSource, "Ed25519", false, ["verify"])
        .catch(() => null)
      : Promise.resolve(null);
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
    const sig = decode(signatures[i]);
    if (key === null || sig === null || sig.length !== 64) continue;
    index.push(i);
    pending.push(
      crypto.subtle.verify(
        "Ed25519",
        key,
        sig as BufferSource,
        bytes.subarray(offsets[i], offsets[i + 1]),
      )
        .catch(() => false),
    );
  }
  const ok = await Promise.all(pending);
  for (let j = 0; j < ok.length; j++) if (ok[j]) results[index[j]] = 1;
  scope.postMessage({ id, results }, [results.buffer]);
};
