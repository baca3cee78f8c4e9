/**
 * LlamaForCausalLM (HF `modeling_llama.py`): pre-norm blocks with RMSNorm (x * w),
 * grouped-query attention with RoPE (default or llama3 frequencies), SwiGLU MLP.
 *   h = h + o_proj(attention(rope(qkv(rmsnorm(h)))))      (o_proj adds into h: fused)
 *   h = h + down(silu(gate(rmsnorm(h))) * up(rmsnorm(h)))  (down adds into h: fused)
 */
import { attentionCore, embedding, gatedMlpUp, lmHead, projection } from "./blocks.ts";
import type { BuildContext, Network } from "./model.ts";
import { DTYPE_BYTES } from "./safetensors.ts";

export async function buildLlama(b: BuildContext): Promise<Network> {
  const { cfg, weights, act } = b;
  const hidden = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const { table, embed } = await embedding(b, 1);
  const layers: Network["layers"] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const inputNorm = await weights.vector(`${p}input_layernorm.weight`, hidden);
    const postAttnNorm = await weights.vector(`${p}post_attention_layernorm.weight`, hidden);
    layers.push({
      attn: [
        ...await attentionCore(b, l, { norm: inputNorm, window: 0, softcap: 0 }),
        await projection(b, `${p}self_attn.o_proj.weight`, hidden, qDim, act.attnOut, act.h, "add"),
      ],
      mlp: [
        await gatedMlpUp(b, l, postAttnNorm, "glu-silu"),
        await projection(
          b,
          `${p}mlp.down_proj.weight`,
          hidden,
          cfg.intermediateSize,
          act.act,
          act.h,
          "add",
        ),
      ],
    });
  }
  const finalNorm = await weights.vector("model.norm.weight", hidden);
  const head = await lmHead(b, table, finalNorm, 0);
  const tableBytes = cfg.tieWordEmbeddings ? 0 : table.rows * table.cols * DTYPE_BYTES[table.dtype];
  return { embed, layers, ...head, weightBytes: weights.bytesLoaded - tableBytes };
}
