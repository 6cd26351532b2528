import { attentionMaps, captionText, decodingSettings, describe as describeModel, tokenStrings } from "./exported";
import type { ExportedModel } from "./exported";

const model: ExportedModel = {
  format: "captioner-onnx",
  version: 2,
  variants: { int8: { encoder: "encoder.onnx", image: "i.onnx", step: "s.onnx" } },
  encoder: { name: "efficientnet-lite0", grid_h: 1, grid_w: 2, dim: 8 },
  preprocess: { crop_size: 224, resize_size: 224, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], resample: "bicubic" },
  decoder: { n_layers: 2, n_heads: 2, head_dim: 4, d_model: 8, image_tokens: 2, max_length: 12, vocab_size: 9 },
  tokens: {
    start_id: 1,
    end_id: 0,
    banned_ids: [1, 2],
    pieces: ["", "", "", "it ", "'s ", "a ", "do", "g ", ". "],
    detokenize: [
      [" ([.,!?;:])", "$1"],
      [" '(s|t|re|ve|m|ll|d)\\b", "'$1"],
    ],
  },
  generation: { num_beams: 3, max_new_tokens: 30, length_penalty: 1, no_repeat_ngram_size: 3 },
};

test("the caption text is the pieces joined and detokenised, as tokenizer.decode does", () => {
  expect(captionText(model, [3, 4, 5, 6, 7, 8])).toBe("it's a dog.");
  expect(tokenStrings(model, [3, 4, 6, 7])).toEqual(["it", "'s", "do", "g"]);
});

test("decoding settings: the model's defaults, the token limit capped by its length", () => {
  expect(decodingSettings(model, 1)).toEqual({
    numBeams: 1,
    maxNewTokens: 11, // max_length - 1, below max_new_tokens
    minNewTokens: 1,
    lengthPenalty: 1,
    noRepeatNgramSize: 3,
  });
  expect(describeModel(model).generation.num_beams).toBe(3);
  expect(describeModel(model).encoder.image_size).toBe(224);
});

test("attention maps: per layer and head as the step gave them, and their mean", () => {
  // one token; (layers 2, heads 2, cells 2)
  const weights = Float32Array.from([1, 0, 0, 1, 0.5, 0.5, 1, 0]);
  const crop = { x: 0, y: 0, width: 1, height: 1 };
  const maps = attentionMaps(model, { ids: [5], score: 0, attention: [weights] }, crop);
  expect(maps.per_head).toEqual([[[[1, 0], [0, 1]], [[0.5, 0.5], [1, 0]]]]);
  expect(maps.mean).toEqual([[0.625, 0.375]]);
  expect([maps.grid_h, maps.grid_w, maps.layers, maps.heads]).toEqual([1, 2, 2, 2]);
});
