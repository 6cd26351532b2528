/** What the page needs from whatever writes its captions: the server's API or the model running
 * in this browser. Both answer with the server's `CaptionResult` shape, so the rest of the page
 * does not care which one it is talking to. */

import type { CaptionResult } from "./api";

export type BackendKind = "device" | "server";

/** The model's decoding defaults (its `GenerationConfig`): the page starts from these. */
export interface GenerationDefaults {
  num_beams: number;
  max_new_tokens: number;
  length_penalty: number;
  no_repeat_ngram_size: number;
}

/** What the page shows about a model and lets the user choose. */
export interface ModelDescription {
  encoder: { name: string; grid_h: number; grid_w: number; image_size: number };
  decoder: { layers: number; heads: number; d_model: number };
  generation: GenerationDefaults;
  metadata: Record<string, unknown>;
  /** the widest beam this backend accepts */
  maxNumBeams: number;
}

export interface CaptionOptions {
  numBeams: number;
}

/** The model's download and start-up in this browser (the device backend loads it on the first
 * caption). `totalBytes` is null until every file's size is known. */
export type ModelLoad =
  | { phase: "idle" }
  | { phase: "downloading"; loadedBytes: number; totalBytes: number | null }
  | { phase: "starting"; loadedBytes: number }
  | { phase: "ready"; loadedBytes: number; ms: number }
  | { phase: "failed" };

export interface CaptioningBackend {
  readonly kind: BackendKind;
  readonly model: ModelDescription;
  caption(image: Blob, options: CaptionOptions, signal: AbortSignal): Promise<CaptionResult>;
  /** Calls `listener` with the model's load now and on every change; answers how to stop. Only
   * a backend that loads a model in the page has one. */
  watchLoad?(listener: (load: ModelLoad) => void): () => void;
}

/** A short name for the model: its encoder and decoder ("efficientnet-lite2 encoder, 3-layer
 * decoder"). */
export function modelName(model: ModelDescription): string {
  return `${model.encoder.name} encoder, ${model.decoder.layers}-layer decoder`;
}

/** `offline`: the server could not be reached; `input`: the file can't be captioned; `failed`:
 * the backend broke while captioning it. */
export type ErrorKind = "offline" | "input" | "failed";

export class CaptionError extends Error {
  constructor(
    message: string,
    readonly kind: ErrorKind,
  ) {
    super(message);
  }
}

/** Any thrown value as a `CaptionError` (a plain `Error` is a failure of the backend). */
export function asCaptionError(error: unknown): CaptionError {
  if (error instanceof CaptionError) return error;
  return new CaptionError(error instanceof Error ? error.message : String(error), "failed");
}

/** The decoding choices offered: greedy, the model's own beam and a couple of wider ones, no
 * wider than the backend accepts. */
export function decodingChoices(model: ModelDescription): number[] {
  const beams = new Set([1, 3, 5, model.generation.num_beams]);
  return [...beams].filter((b) => b >= 1 && b <= model.maxNumBeams).sort((a, b) => a - b);
}
