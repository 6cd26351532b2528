/// <reference lib="webworker" />
/** The model's own thread: captions run here one after another, so the page stays responsive
 * and its own work (drawing, the next webcam frame) overlaps with the model's. */

import { asCaptionError } from "../backend";
import { Cancelled, DeviceCaptioner } from "./deviceCaptioner";
import type { WorkerReply, WorkerRequest } from "./deviceBackend";

let captioner: DeviceCaptioner | null = null;
const cancelled = new Set<number>();
let queue: Promise<unknown> = Promise.resolve();

self.onmessage = (event: MessageEvent<WorkerRequest>) => {
  const request = event.data;
  if (request.type === "cancel") {
    cancelled.add(request.id);
    return;
  }
  captioner ??= new DeviceCaptioner(request.exported, request.directory);
  const model = captioner;
  queue = queue.then(async () => {
    let reply: WorkerReply;
    try {
      const result = await model.caption(request.image, request.beamSize, () => cancelled.has(request.id));
      reply = { id: request.id, result };
    } catch (error) {
      reply =
        error instanceof Cancelled
          ? { id: request.id, cancelled: true }
          : { id: request.id, error: { message: asCaptionError(error).message, kind: asCaptionError(error).kind } };
    }
    cancelled.delete(request.id);
    self.postMessage(reply);
  });
};
