/** Captioning in this browser with the model `captioner export --web` put beside the page. */

import type { CaptioningBackend } from "../backend";

/** Where the exported site keeps the model, relative to the page. */
export const MODEL_DIR = "model/";

/** The backend for the model in `directory`, or null when the page came without one. */
export async function findDeviceModel(directory: string): Promise<CaptioningBackend | null> {
  void directory;
  return null;
}
