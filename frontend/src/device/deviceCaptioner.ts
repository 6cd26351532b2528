/** The whole in-browser caption of one photo: decode, preprocess, the three ONNX graphs in
 * ONNX Runtime Web (WASM), decoding. The WASM and the graphs come gzip-compressed where the site
 * stores them so (fetchFile). */

import type { InferenceSession } from "onnxruntime-web";
import type { CaptionResult } from "../api";
import { CaptionError } from "../backend";
import { decodeImage } from "./decodeImage";
import {
  attentionMaps,
  captionText,
  decodingSettings,
  graphFiles,
  specialTokens,
  tokenStrings,
} from "./exported";
import type { ExportedModel } from "./exported";
import { fetchFile, ORT_WASM_FILE } from "./fetchFile";
import { generate } from "./generation";
import { cropBox, normalise, resizeAndCrop } from "./preprocess";
import { OnnxStepDecoder } from "./stepDecoder";
import type { Tensor } from "./stepDecoder";

type Ort = typeof import("onnxruntime-web/wasm");

interface Sessions {
  ort: Ort;
  encoder: InferenceSession;
  image: InferenceSession;
  step: InferenceSession;
}

export class Cancelled extends Error {}

export class DeviceCaptioner {
  private sessions: Promise<Sessions> | null = null;

  /** `directory`: the absolute URL of the folder holding captioner.json and the graphs. */
  constructor(
    private readonly exported: ExportedModel,
    private readonly directory: string,
  ) {}

  /** The graphs, loaded on first use (tens of MB) and kept; a failed load is tried again. */
  private load(): Promise<Sessions> {
    this.sessions ??= (async () => {
      const ort = await import("onnxruntime-web/wasm");
      // The build stores the WASM gzip-compressed (vite.config.ts); `npm run dev` serves it as
      // the package has it, and ONNX Runtime then finds it itself.
      if (!import.meta.env.DEV && !ort.env.wasm.wasmBinary) {
        ort.env.wasm.wasmBinary = await fetchFile(new URL(ORT_WASM_FILE, document.baseURI).href);
      }
      const files = graphFiles(this.exported);
      const options: InferenceSession.SessionOptions = {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
      };
      const open = async (file: string) =>
        ort.InferenceSession.create(await fetchFile(this.directory + file), options);
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

  /** `cancelled` is asked between steps: a caption nobody waits for stops early. */
  async caption(image: Blob, beamSize: number, cancelled: () => boolean): Promise<CaptionResult> {
    const check = () => {
      if (cancelled()) throw new Cancelled();
    };
    const started = performance.now();
    const config = this.exported.preprocess;
    const photo = await decodeImage(image);
    const pixels = normalise(config, resizeAndCrop(config, photo));
    const decoded = performance.now();
    const { ort, ...graphs } = await this.load();
    check();
    const loaded = performance.now();
    const size = config.crop_size;
    const { features } = await graphs.encoder.run({
      pixels: new ort.Tensor("float32", pixels, [1, 3, size, size]),
    });
    const imageMemory = await graphs.image.run({ features });
    const encoded = performance.now();
    const decoder = new OnnxStepDecoder(async (feeds) => {
      check();
      const tensors = Object.fromEntries(
        Object.entries(feeds).map(([name, t]: [string, Tensor]) => [
          name,
          t.data instanceof BigInt64Array
            ? new ort.Tensor("int64", t.data, t.dims)
            : new ort.Tensor("float32", t.data, t.dims),
        ]),
      );
      return (await graphs.step.run(tensors)) as unknown as Record<string, Tensor>;
    }, imageMemory as unknown as Record<string, Tensor>, this.exported.decoder.n_layers);
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
