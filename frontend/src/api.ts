/** The JSON API served by `captioner serve` (see /docs on the server), and the captioning
 * backend that uses it. */

import { CaptionError } from "./backend";
import type { CaptioningBackend, CaptionOptions, GenerationDefaults } from "./backend";

export interface CropBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface AttentionMaps {
  grid_h: number;
  grid_w: number;
  layers: number;
  heads: number;
  /** tokens x layers x heads x (grid_h * grid_w) */
  per_head: number[][][][];
  /** tokens x (grid_h * grid_w): the mean over layers and heads */
  mean: number[][];
  /** the centre crop the model saw, as fractions of the image: the grid covers this box */
  crop: CropBox;
}

export interface CaptionResult {
  caption: string;
  tokens: string[];
  score: number;
  attention: AttentionMaps | null;
  image: { width: number; height: number };
  timings_ms: Record<string, number>;
  batch_size: number;
}

export interface ModelInfo {
  source: string;
  encoder: { name: string; grid_h: number; grid_w: number; image_size: number };
  decoder: { layers: number; heads: number; d_model: number; parameters: number };
  /** the model's decoding defaults */
  generation: GenerationDefaults;
  metadata: Record<string, unknown>;
  server: { max_upload_mb: number; max_num_beams: number };
}

const OFFLINE = "Can't reach the captioning server. Is `captioner serve` running?";

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new CaptionError(OFFLINE, "offline");
  }
  const body = await response.json().catch(() => null);
  if (response.ok && body !== null) return body as T;
  const message = typeof body?.error === "string" ? body.error : `HTTP ${response.status}`;
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    throw new CaptionError(OFFLINE, "offline");
  }
  throw new CaptionError(message, response.status >= 500 ? "failed" : "input");
}

export function captionImage(
  image: Blob,
  options: CaptionOptions,
  signal?: AbortSignal,
): Promise<CaptionResult> {
  const form = new FormData();
  form.append("file", image, image instanceof File ? image.name : "image.png");
  form.append("num_beams", String(options.numBeams));
  form.append("attention", "true");
  return request<CaptionResult>("/api/caption", { method: "POST", body: form, signal });
}

export const getHealth = () => request<{ status: string }>("/api/health");
export const getModel = () => request<ModelInfo>("/api/model");

/** Captioning on the server that described itself as `info`. */
export function serverBackend(info: ModelInfo): CaptioningBackend {
  return {
    kind: "server",
    model: { ...info, maxNumBeams: info.server.max_num_beams },
    caption: captionImage,
  };
}
