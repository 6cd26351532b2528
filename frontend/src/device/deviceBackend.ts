/** Captioning in this browser with ONNX Runtime Web (WASM) and the model that
 * `captioner export --web` puts beside the page: no server, the photo never leaves the device. */

import type { InferenceSession } from "onnxruntime-web";
import { CaptionError } from "../backend";
import type { CaptioningBackend, CaptionOptions, ModelDescription } from "../backend";
import type { CaptionResult } from "../api";
import { decodeImage } from "./decodeImage";
import {
  attentionMaps,
  captionText,
  decodingSettings,
  describe,
  FORMAT,
  FORMAT_VERSION,
  graphFiles,
  specialTokens,
  tokenStrings,
} from "./exported";
import type { ExportedModel } from "./exported";
import { generate } from "./generation";
import { cropBox, normalise, resizeAndCrop } from "./preprocess";
import { OnnxStepDecoder } from "./stepDecoder";
import type { Tensor } from "./stepDecoder";

/** Where the exported site keeps the model, relative to the page. */
export const MODEL_DIR = "model/";
export const DESCRIPTION_FILE = "captioner.json";

/** The backend for the model in `directory`, or null when the page came without one. */
export async function findDeviceModel(directory: string): Promise<CaptioningBackend | null> {
  let response: Response;
  try {
    response = await fetch(directory + DESCRIPTION_FILE);
  } catch {
    return null;
  }
  if (!response.ok) return null;
  const exported = await response.json().catch(() => null);
  if (exported?.format !== FORMAT) return null; // e.g. a dev server's index.html fallback
  if (exported.version !== FORMAT_VERSION) {
    throw new CaptionError(
      `the model beside this page is format version ${exported.version}; this page reads ${FORMAT_VERSION}`,
      "failed",
    );
  }
  return new DeviceBackend(exported as ExportedModel, directory);
}

type Ort = typeof import("onnxruntime-web/wasm");

interface Sessions {
  ort: Ort;
  encoder: InferenceSession;
  image: InferenceSession;
  step: InferenceSession;
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new DOMException("captioning was cancelled", "AbortError");
}

class DeviceBackend implements CaptioningBackend {
  readonly kind = "device";
  readonly model: ModelDescription;
  private sessions: Promise<Sessions> | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly exported: ExportedModel,
    private readonly directory: string,
  ) {
    this.model = describe(exported);
  }

  /** One caption at a time (the sessions are shared); a cancelled one stops at its next step. */
  caption(image: Blob, options: CaptionOptions, signal: AbortSignal): Promise<CaptionResult> {
    const result = this.queue.then(() => this.captionNow(image, options, signal));
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** The graphs, loaded on first use (tens of MB) and kept; a failed load is tried again. */
  private load(): Promise<Sessions> {
    this.sessions ??= (async () => {
      const ort = await import("onnxruntime-web/wasm");
      const files = graphFiles(this.exported);
      const options: InferenceSession.SessionOptions = {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
      };
      const open = (file: string) => ort.InferenceSession.create(this.directory + file, options);
      const [encoder, image, step] = await Promise.all([
        open(files.encoder),
        open(files.image),
        open(files.step),
      ]);
      return { ort, encoder, image, step };
    })().catch((error) => {
      this.sessions = null;
      throw new CaptionError(`the model could not be loaded: ${error?.message ?? error}`, "failed");
    });
    return this.sessions;
  }

  private async captionNow(
    image: Blob,
    { beamSize }: CaptionOptions,
    signal: AbortSignal,
  ): Promise<CaptionResult> {
    const started = performance.now();
    throwIfAborted(signal);
    const config = this.exported.preprocess;
    const photo = await decodeImage(image);
    const pixels = normalise(config, resizeAndCrop(config, photo));
    const decoded = performance.now();
    const { ort, ...graphs } = await this.load();
    throwIfAborted(signal);
    const loaded = performance.now();
    const size = config.crop_size;
    const { features } = await graphs.encoder.run({
      pixels: new ort.Tensor("float32", pixels, [1, 3, size, size]),
    });
    const { cross_kv } = await graphs.image.run({ features });
    const encoded = performance.now();
    const decoder = new OnnxStepDecoder(async (feeds) => {
      throwIfAborted(signal);
      const tensors = Object.fromEntries(
        Object.entries(feeds).map(([name, t]: [string, Tensor]) => [
          name,
          t.data instanceof BigInt64Array
            ? new ort.Tensor("int64", t.data, t.dims)
            : new ort.Tensor("float32", t.data, t.dims),
        ]),
      );
      return (await graphs.step.run(tensors)) as unknown as Record<string, Tensor>;
    }, cross_kv as unknown as Tensor);
    const best = await generate(
      decoder,
      specialTokens(this.exported),
      decodingSettings(this.exported, beamSize),
    );
    const finished = performance.now();
    return {
      caption: captionText(this.exported, best.ids),
      tokens: tokenStrings(this.exported, best.ids),
      score: best.score,
      attention: attentionMaps(this.exported, best, cropBox(config, photo.width, photo.height)),
      image: { width: photo.width, height: photo.height },
      timings_ms: {
        decode: decoded - started,
        load: loaded - decoded,
        encoder: encoded - loaded,
        decoder: finished - encoded,
        total: finished - started,
      },
      batch_size: 1,
    };
  }
}
