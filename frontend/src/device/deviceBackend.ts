/** Captioning in this browser with the model that `captioner export --web` puts beside the page:
 * no server, the photo never leaves the device. The model runs in a worker (`modelWorker.ts`). */

import type { CaptionResult } from "../api";
import { CaptionError } from "../backend";
import type { CaptioningBackend, CaptionOptions, ErrorKind, ModelDescription } from "../backend";
import { describe, FORMAT, FORMAT_VERSION } from "./exported";
import type { ExportedModel } from "./exported";

/** Where the exported site keeps the model, relative to the page. */
export const MODEL_DIR = "model/";
export const DESCRIPTION_FILE = "captioner.json";

export type WorkerRequest =
  | {
      type: "caption";
      id: number;
      image: Blob;
      beamSize: number;
      exported: ExportedModel;
      /** absolute URL of the model's folder */
      directory: string;
    }
  | { type: "cancel"; id: number };

export type WorkerReply =
  | { id: number; result: CaptionResult }
  | { id: number; error: { message: string; kind: ErrorKind } }
  | { id: number; cancelled: true };

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
  return new DeviceBackend(exported as ExportedModel, new URL(directory, document.baseURI).href);
}

class DeviceBackend implements CaptioningBackend {
  readonly kind = "device";
  readonly model: ModelDescription;
  private worker: Worker | null = null;
  private nextId = 0;
  private waiting = new Map<number, (reply: WorkerReply) => void>();

  constructor(
    private readonly exported: ExportedModel,
    private readonly directory: string,
  ) {
    this.model = describe(exported);
  }

  /** Started on the first caption, so a page that only talks to the server never loads it. */
  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL("./modelWorker.ts", import.meta.url), { type: "module" });
    worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      this.waiting.get(event.data.id)?.(event.data);
      this.waiting.delete(event.data.id);
    };
    worker.onerror = (event) => {
      const failure = { message: `the model's worker failed: ${event.message}`, kind: "failed" as const };
      for (const [id, answer] of this.waiting) answer({ id, error: failure });
      this.waiting.clear();
      this.worker = null;
    };
    return (this.worker = worker);
  }

  caption(image: Blob, { beamSize }: CaptionOptions, signal: AbortSignal): Promise<CaptionResult> {
    const worker = this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const aborted = () => {
        worker.postMessage({ type: "cancel", id } satisfies WorkerRequest);
        reject(new DOMException("captioning was cancelled", "AbortError"));
      };
      if (signal.aborted) return aborted();
      signal.addEventListener("abort", aborted, { once: true });
      this.waiting.set(id, (reply) => {
        signal.removeEventListener("abort", aborted);
        if ("result" in reply) resolve(reply.result);
        else if ("error" in reply) reject(new CaptionError(reply.error.message, reply.error.kind));
      });
      const request: WorkerRequest = {
        type: "caption",
        id,
        image,
        beamSize,
        exported: this.exported,
        directory: this.directory,
      };
      worker.postMessage(request);
    });
  }
}
