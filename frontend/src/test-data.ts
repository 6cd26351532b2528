import type { AttentionMaps, CaptionResult, ModelInfo } from "./api";

/** Attention for `tokens` tokens over a 2x2 grid, 2 layers x 2 heads: token t, layer l, head h
 * looks only at cell (t + l + h) % 4, so every selection gives a different map. */
export function attentionMaps(tokens: number): AttentionMaps {
  const cell = (i: number) => [0, 1, 2, 3].map((c) => (c === i % 4 ? 1 : 0));
  const perHead = Array.from({ length: tokens }, (_, t) =>
    [0, 1].map((l) => [0, 1].map((h) => cell(t + l + h))),
  );
  const mean = perHead.map((layers) =>
    [0, 1, 2, 3].map((c) => layers.flat().reduce((sum, head) => sum + head[c], 0) / 4),
  );
  return {
    grid_h: 2,
    grid_w: 2,
    layers: 2,
    heads: 2,
    per_head: perHead,
    mean,
    crop: { x: 0.125, y: 0, width: 0.75, height: 1 },
  };
}

export function captionResult(tokens = ["a", "dog", "runs"]): CaptionResult {
  return {
    caption: tokens.join(" "),
    tokens,
    score: -1.5,
    attention: attentionMaps(tokens.length),
    image: { width: 64, height: 48 },
    timings_ms: { read: 0.1, decode: 1, queue: 2, inference: 40, total: 44 },
    batch_size: 1,
  };
}

export const modelInfo: ModelInfo = {
  source: "bundled",
  encoder: { name: "efficientnet-lite2", grid_h: 9, grid_w: 9, image_size: 260 },
  decoder: { layers: 6, heads: 8, d_model: 512, parameters: 1000 },
  generation: { num_beams: 3, max_new_tokens: 30, length_penalty: 1, no_repeat_ngram_size: 3 },
  metadata: { dataset: "flickr8k", dev_metrics: { CIDEr: 0.61234, BLEU4: 0.2 } },
  server: { max_upload_mb: 10, max_num_beams: 8 },
};
