/** Writing safetensors files in tests (shared by the test files that build model variants). */

/**
 * A safetensors file: u64 LE header length, the JSON header, then `pieces` back to back (the
 * header's data_offsets must already describe them in that order).
 */
export function safetensorsBytes(header: unknown, pieces: Uint8Array[]): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const dataLength = pieces.reduce((sum, p) => sum + p.length, 0);
  const out = new Uint8Array(8 + json.length + dataLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
