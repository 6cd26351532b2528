/** Captioning in this browser with the model that `captioner export --web` puts beside the page:
 * no server, the photo never leaves the device. */

import type { CaptionResult } from "../api";
import { CaptionError } from "../backend";
import type { CaptioningBackend, CaptionOptions, ModelDescription, ModelLoad } from "../backend";
import { Cancelled, DeviceCaptioner } from "./deviceCaptioner";
import { describe, FORMAT, FORMAT_VERSION, withCurrentNames } from "./exported";
import type { ExportedModel } from "./exported";

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
      `the model beside this page is format version ${exported.version} and this page reads ` +
        `version ${FORMAT_VERSION}: export the site again (captioner export --web) with one captioner`,
      "failed",
    );
  }
  return new DeviceBackend(withCurrentNames(exported as ExportedModel), new URL(directory, document.baseURI).href);
}

class DeviceBackend implements CaptioningBackend {
  readonly kind = "device";
  readonly model: ModelDescription;
  private readonly captioner: DeviceCaptioner;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(exported: ExportedModel, directory: string) {
    this.model = describe(exported);
    this.captioner = new DeviceCaptioner(exported, directory);
  }

  watchLoad(listener: (load: ModelLoad) => void): () => void {
    return this.captioner.watchLoad(listener);
  }

  /** One caption at a time (the sessions are shared); a cancelled one stops at its next step.
   * On the page's own thread: tried in a worker, the model ran beside the webcam video's drawing
   * and live mode wrote fewer captions a second on 2 cores. */
  caption(image: Blob, { numBeams }: CaptionOptions, signal: AbortSignal): Promise<CaptionResult> {
    const run = async () => {
      try {
        return await this.captioner.caption(image, numBeams, () => signal.aborted);
      } catch (error) {
        if (error instanceof Cancelled) throw new DOMException("captioning was cancelled", "AbortError");
        throw error;
      }
    };
    const result = this.queue.then(run);
    this.queue = result.catch(() => undefined);
    return result;
  }
}
