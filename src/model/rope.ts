/** Rotary embedding frequencies (default and llama3-scaled) and the cos/sin table the GPU reads. */
import type { RopeScaling } from "./config.ts";

/** inv_freq[i] = theta^(-2i/D), then llama3's wavelength-dependent scaling (HF semantics). */
export function inverseFrequencies(
  headDim: number,
  theta: number,
  scaling: RopeScaling,
): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    // HF computes inv_freq in f32; round so the angles match the reference.
    inv[i] = Math.fround(1 / Math.pow(theta, (2 * i) / headDim));
  }
  if (scaling.type === "llama3") {
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = scaling;
    const lowFreqWavelen = originalMaxPositions / lowFreqFactor;
    const highFreqWavelen = originalMaxPositions / highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen > lowFreqWavelen) {
        inv[i] = inv[i] / factor;
      } else if (wavelen >= highFreqWavelen) {
        const smooth = (originalMaxPositions / wavelen - lowFreqFactor) /
          (highFreqFactor - lowFreqFactor);
        inv[i] = (1 - smooth) * (inv[i] / factor) + smooth * inv[i];
      }
      inv[i] = Math.fround(inv[i]);
    }
  }
  return inv;
}

/** (positions, D/2) pairs [cos, sin] of the angle fround(pos * inv_freq[i]), as f32. */
export function cosSinTable(positions: number, inv: Float64Array): Float32Array<ArrayBuffer> {
  const half = inv.length;
  const table = new Float32Array(positions * half * 2);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(p * inv[i]);
      table[(p * half + i) * 2] = Math.cos(angle);
      table[(p * half + i) * 2 + 1] = Math.sin(angle);
    }
  }
  return table;
}
