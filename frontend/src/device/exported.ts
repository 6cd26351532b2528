/** `captioner.json`, the description `captioner export --onnx` writes beside the graphs (the
 * format is documented in src/captioner/onnx/), and what the page reads from it. */

import type { AttentionMaps } from "../api";
import type { GenerationDefaults, ModelDescription } from "../backend";
import type { DecodingSettings, Hypothesis, SpecialTokens } from "./generation";
import type { PreprocessConfig } from "./preprocess";

export const FORMAT = "captioner-onnx";
/** 2: the decoder graphs take and give one tensor per layer (`past_key_{l}`, `cross_key_{l}`,
 * ...), not the packed `past_kv`/`cross_kv` of 1. */
export const FORMAT_VERSION = 2;

export interface GraphFiles {
  encoder: string;
  image: string;
  step: string;
}

export interface ExportedModel {
  format: string;
  version: number;
  variants: Partial<Record<"fp32" | "int8", GraphFiles>>;
  encoder: { name: string; grid_h: number; grid_w: number; dim: number };
  preprocess: PreprocessConfig;
  decoder: {
    n_layers: number;
    n_heads: number;
    head_dim: number;
    d_model: number;
    image_tokens: number;
    max_length: number;
    vocab_size: number;
  };
  tokens: {
    start_id: number;
    end_id: number;
    banned_ids: number[];
    /** per model id its text; a word-final piece ends with a space; special ids are "" */
    pieces: string[];
    /** [pattern, replacement] regexes applied in order to the joined text */
    detokenize: [string, string][];
  };
  generation: GenerationDefaults & { min_new_tokens?: number };
  metadata?: Record<string, unknown>;
}

/** Widest beam offered on the device: each beam is a row of every decoder step. */
export const DEVICE_MAX_NUM_BEAMS = 8;

/** Generation options by the names exports wrote before they took Hugging Face's (as
 * `RENAMED_OPTIONS` in src/captioner/config.py). */
const RENAMED_OPTIONS: Record<string, string> = { beam_size: "num_beams" };

/** `captioner.json` as read, an old option name in its `generation` read as the new one. */
export function withCurrentNames(model: ExportedModel): ExportedModel {
  const entries = Object.entries(model.generation).map(([name, value]) => [RENAMED_OPTIONS[name] ?? name, value]);
  return { ...model, generation: Object.fromEntries(entries) as ExportedModel["generation"] };
}

/** The graphs to run: the int8 ones when exported (the web site has only those). */
export function graphFiles(model: ExportedModel): GraphFiles {
  const files = model.variants.int8 ?? model.variants.fp32;
  if (!files) throw new Error("captioner.json names no graphs (no int8 or fp32 variant)");
  return files;
}

export function describe(model: ExportedModel): ModelDescription {
  return {
    encoder: { ...model.encoder, image_size: model.preprocess.crop_size },
    decoder: { layers: model.decoder.n_layers, heads: model.decoder.n_heads, d_model: model.decoder.d_model },
    generation: model.generation,
    metadata: model.metadata ?? {},
    maxNumBeams: DEVICE_MAX_NUM_BEAMS,
  };
}

export function specialTokens(model: ExportedModel): SpecialTokens {
  const { start_id, end_id, banned_ids } = model.tokens;
  return { start: start_id, end: end_id, banned: banned_ids };
}

/** The model's generation defaults with `numBeams`, the token limit capped as
 * `generation.token_limit` caps it. */
export function decodingSettings(model: ExportedModel, numBeams: number): DecodingSettings {
  const g = model.generation;
  return {
    numBeams,
    maxNewTokens: Math.min(g.max_new_tokens, model.decoder.max_length - 1),
    minNewTokens: g.min_new_tokens ?? 1,
    lengthPenalty: g.length_penalty,
    noRepeatNgramSize: g.no_repeat_ngram_size,
  };
}

/** `tokenizer.decode`: the pieces joined, whitespace collapsed, punctuation re-attached. */
export function captionText(model: ExportedModel, ids: number[]): string {
  let text = ids
    .map((id) => model.tokens.pieces[id])
    .join("")
    .replace(/\s+/g, " ")
    .trim();
  for (const [pattern, replacement] of model.tokens.detokenize) {
    text = text.replace(new RegExp(pattern, "g"), replacement);
  }
  return text;
}

/** `tokenizer.token_strings`: the word shown for each id. */
export function tokenStrings(model: ExportedModel, ids: number[]): string[] {
  return ids.map((id) => model.tokens.pieces[id].trim());
}

/** The step's cross-attention of each token ((layers, heads, cells) each) as the server sends it:
 * per head, and the mean over layers and heads. */
export function attentionMaps(
  model: ExportedModel,
  hypothesis: Hypothesis,
  crop: AttentionMaps["crop"],
): AttentionMaps {
  const { n_layers: layers, n_heads: heads } = model.decoder;
  const { grid_h, grid_w } = model.encoder;
  const cells = grid_h * grid_w;
  const perHead = hypothesis.attention.map((weights) =>
    Array.from({ length: layers }, (_, l) =>
      Array.from({ length: heads }, (_, h) =>
        Array.from(weights.subarray((l * heads + h) * cells, (l * heads + h + 1) * cells)),
      ),
    ),
  );
  const mean = hypothesis.attention.map((weights) => {
    const sums = new Array<number>(cells).fill(0);
    weights.forEach((w, i) => (sums[i % cells] += w));
    return sums.map((s) => s / (layers * heads));
  });
  return { grid_h, grid_w, layers, heads, per_head: perHead, mean, crop };
}
