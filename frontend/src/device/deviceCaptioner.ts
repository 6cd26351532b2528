/** The whole in-browser caption of one photo: decode, preprocess, the three ONNX graphs in
 * ONNX Runtime Web (WASM), decoding. The WASM and the graphs come gzip-compressed where the site
 * stores them so (fetchFile). */

import type { InferenceSession } from "onnxruntime-web";
import type { CaptionResult } from "../api";
import { CaptionError } from "../backend";
import type { ModelLoad } from "../backend";
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

/** Bytes of the files being downloaded: `report` hears the sum so far, and the total once every
 * file's size is known. */
export function downloadTracker(report: (loaded: number, total: number | null) => void) {
  const files = new Map<string, { loaded: number; total: number | null | undefined }>();
  return (name: string) => {
    files.set(name, { loaded: 0, total: undefined });
    return (loaded: number, total: number | null) => {
      files.set(name, { loaded, total });
      const all = [...files.values()];
      const sizes = all.map((f) => f.total);
      report(
        all.reduce((sum, f) => sum + f.loaded, 0),
        sizes.every((size) => typeof size === "number") ? sizes.reduce((a, b) => a + b, 0) : null,
      );
    };
  };
}

export class DeviceCaptioner {
  private sessions: Promise<Sessions> | null = null;
  private ready: Sessions | null = null;
  private loadState: ModelLoad = { phase: "idle" };
  private readonly loadListeners = new Set<(load: ModelLoad) => void>();

  /** `directory`: the absolute URL of the folder holding captioner.json and the graphs. */
  constructor(
    private readonly exported: ExportedModel,
    private readonly directory: string,
  ) {}

  /** Calls `listener` with the model's load now and on every change; answers how to stop. */
  watchLoad(listener: (load: ModelLoad) => void): () => void {
    this.loadListeners.add(listener);
    listener(this.loadState);
    return () => this.loadListeners.delete(listener);
  }

  private setLoad(load: ModelLoad): void {
    this.loadState = load;
    for (const listener of this.loadListeners) listener(load);
  }

  /** The graphs, loaded on first use (tens of MB) and kept; a failed load is tried again. The
   * browser's HTTP cache keeps the files: a static host's validators (ETag, Last-Modified) or
   * `captioner serve`'s `Cache-Control: no-cache` make a reload a revalidation, not a download. */
  private load(): Promise<Sessions> {
    this.sessions ??= this.open().then(
      (sessions) => (this.ready = sessions),
      (error) => {
        this.sessions = null;
        this.setLoad({ phase: "failed" });
        throw new CaptionError(`the model could not be loaded: ${error?.message ?? error}`, "failed");
      },
    );
    return this.sessions;
  }

  private async open(): Promise<Sessions> {
    const started = performance.now();
    let downloaded = 0;
    this.setLoad({ phase: "downloading", loadedBytes: 0, totalBytes: null });
    const track = downloadTracker((loaded, total) => {
      downloaded = loaded;
      this.setLoad({ phase: "downloading", loadedBytes: loaded, totalBytes: total });
    });
    const ort = await import("onnxruntime-web/wasm");
    // The build stores the WASM gzip-compressed (vite.config.ts); `npm run dev` serves it as
    // the package has it, and ONNX Runtime then finds it itself.
    const needsWasm = !import.meta.env.DEV && !ort.env.wasm.wasmBinary;
    const files = graphFiles(this.exported);
    const names = [files.encoder, files.image, files.step];
    const download = (url: string) => fetchFile(url, track(url));
    const [wasm, graphs] = await Promise.all([
      needsWasm ? download(new URL(ORT_WASM_FILE, document.baseURI).href) : null,
      Promise.all(names.map((name) => download(this.directory + name))),
    ]);
    if (wasm) ort.env.wasm.wasmBinary = wasm;
    this.setLoad({ phase: "starting", loadedBytes: downloaded });
    const options: InferenceSession.SessionOptions = {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    };
    const [encoder, image, step] = await Promise.all(
      graphs.map((graph) => ort.InferenceSession.create(graph, options)),
    );
    this.setLoad({ phase: "ready", loadedBytes: downloaded, ms: performance.now() - started });
    return { ort, encoder, image, step };
  }

  /** `cancelled` is asked between steps: a caption nobody waits for stops early. */
  async caption(image: Blob, numBeams: number, cancelled: () => boolean): Promise<CaptionResult> {
    const check = () => {
      if (cancelled()) throw new Cancelled();
    };
    const started = performance.now();
    const config = this.exported.preprocess;
    const photo = await decodeImage(image);
    const pixels = normalise(config, resizeAndCrop(config, photo));
    const decoded = performance.now();
    const waited = !this.ready;
    const { ort, ...graphs } = this.ready ?? (await this.load());
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
      decodingSettings(this.exported, numBeams),
    );
    const finished = performance.now();
    return {
      caption: captionText(this.exported, best.ids),
      tokens: tokenStrings(this.exported, best.ids),
      score: best.score,
      attention: attentionMaps(this.exported, best, cropBox(config, photo.width, photo.height)),
      image: { width: photo.width, height: photo.height },
      // `total` is the caption's own time: the model's load (`load`, what this caption waited
      // for it, only on a caption that did) is reported apart.
      timings_ms: {
        decode: decoded - started,
        ...(waited ? { load: loaded - decoded } : {}),
        encoder: encoded - loaded,
        decoder: finished - encoded,
        total: finished - started - (loaded - decoded),
      },
      batch_size: 1,
    };
  }
}
