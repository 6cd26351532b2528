import { CaptionError } from "../backend";
import type { Pixels } from "./preprocess";

/** The most pixels decoded (as the server's default): a bigger image would exhaust the tab. */
export const MAX_PIXELS = 40_000_000;

/** A file to upright 8-bit RGBA pixels as the Python side reads it: EXIF orientation applied,
 * no colour-profile conversion (Pillow applies none), transparency over white. */
export async function decodeImage(blob: Blob): Promise<Pixels> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch {
    throw new CaptionError("the file is not an image in a format this browser reads", "input");
  }
  try {
    const { width, height } = bitmap;
    if (width * height > MAX_PIXELS) {
      throw new CaptionError(
        `the image is ${width}x${height} pixels, over the limit of ${MAX_PIXELS} pixels`,
        "input",
      );
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    if (!context) throw new CaptionError("this browser cannot read pixels from a canvas", "failed");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0);
    return { width, height, data: context.getImageData(0, 0, width, height).data };
  } finally {
    bitmap.close();
  }
}
