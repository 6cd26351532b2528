/** What the page needs from whatever writes its captions: the server's API or the model running
 * in this browser. Both answer with the server's `CaptionResult` shape, so the rest of the page
 * does not care which one it is talking to. */

import type { CaptionResult } from "./api";

export type BackendKind = "device" | "server";

/** The model's decoding defaults (its `GenerationConfig`): the page starts from these. */
export interface GenerationDefaults {
  beam_size: number;
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
  maxBeamSize: number;
}

export interface CaptionOptions {
  beamSize: number;
}

export interface CaptioningBackend {
  readonly kind: BackendKind;
  readonly model: ModelDescription;
  caption(image: Blob, options: CaptionOptions, signal: AbortSignal): Promise<CaptionResult>;
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
  const beams = new Set([1, 3, 5, model.generation.beam_size]);
  return [...beams].filter((b) => b >= 1 && b <= model.maxBeamSize).sort((a, b) => a - b);
}
