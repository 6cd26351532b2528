// The TypeScript preprocessing against the Python package's own (`captioner.transforms`), byte
// for byte, on random images of the shapes that take different paths (upscale, downscale, the
// integer reduction of large images, crops smaller than the resize). Skips without the venv.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { cropBox, cropRegion, normalise, resizeAndCrop } from "./preprocess";
import type { Pixels, PreprocessConfig } from "./preprocess";

const ROOT = resolve(__dirname, "../../..");
// The repository's venv, or the Python CAPTIONER_PYTHON names (as for the e2e tests).
const PYTHON = process.env.CAPTIONER_PYTHON ?? join(ROOT, ".venv/bin/python");

const PYTHON_SIDE = `
import json, sys
import numpy as np
from PIL import Image
from captioner.transforms import Preprocess
request = json.loads(sys.stdin.buffer.readline())
c = request["config"]
config = Preprocess(c["crop_size"], c["resize_size"], tuple(c["mean"]), tuple(c["std"]), c["resample"])
data = sys.stdin.buffer.read()
offset = 0
for width, height in request["sizes"]:
    image = Image.frombytes("RGB", (width, height), data[offset : offset + width * height * 3])
    offset += width * height * 3
    sys.stdout.buffer.write(np.asarray(config.resize_and_crop(image)).tobytes())
    sys.stdout.buffer.write(config(image).astype("<f4").tobytes())
`;

/** A smooth gradient with noise (seeded), so that filters have something to get wrong. */
function randomImage(width: number, height: number, seed: number): Pixels {
  let state = seed;
  const next = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      data[i] = Math.floor((255 * x) / width);
      data[i + 1] = Math.floor(255 * next());
      data[i + 2] = (x * 7 + y * 13) % 256;
      data[i + 3] = 255;
    }
  }
  return { width, height, data };
}

const rgb = (image: Pixels) => image.data.filter((_, i) => i % 4 !== 3);

function pythonPreprocess(config: PreprocessConfig, images: Pixels[]) {
  const header = JSON.stringify({ config, sizes: images.map((i) => [i.width, i.height]) });
  const input = Buffer.concat([Buffer.from(header + "\n"), ...images.map((i) => Buffer.from(rgb(i)))]);
  const run = spawnSync(PYTHON, ["-c", PYTHON_SIDE], { input, maxBuffer: 1 << 28, cwd: ROOT });
  if (run.status !== 0) throw new Error(run.stderr.toString());
  const size = config.crop_size * config.crop_size;
  const results: { pixels: Uint8Array; tensor: Float32Array }[] = [];
  let offset = 0;
  for (let i = 0; i < images.length; i++) {
    const pixels = new Uint8Array(run.stdout.subarray(offset, offset + size * 3));
    offset += size * 3;
    const bytes = run.stdout.subarray(offset, offset + size * 12);
    offset += size * 12;
    results.push({ pixels, tensor: new Float32Array(new Uint8Array(bytes).buffer) });
  }
  return results;
}

const LITE: PreprocessConfig = {
  crop_size: 260,
  resize_size: 260,
  mean: [0.498, 0.498, 0.498],
  std: [0.502, 0.502, 0.502],
  resample: "bicubic",
};
const CROPPING: PreprocessConfig = {
  crop_size: 64,
  resize_size: 73,
  mean: [0.481, 0.458, 0.408],
  std: [0.269, 0.261, 0.276],
  resample: "bilinear",
};

describe.skipIf(!existsSync(PYTHON))("matches captioner.transforms", () => {
  test.each([
    ["bicubic, crop = resize", LITE, [[500, 375], [375, 500], [333, 500], [260, 260], [120, 90], [1201, 799], [2400, 700], [9, 1100], [2000, 1600]]],
    ["bilinear, crop < resize", CROPPING, [[500, 375], [64, 64], [73, 90], [640, 480], [1000, 230], [1000, 700]]],
  ] as const)("%s", (_, config, sizes) => {
    const images = sizes.map(([w, h], i) => randomImage(w, h, i + 1));
    const expected = pythonPreprocess(config, images);
    images.forEach((image, i) => {
      const pixels = resizeAndCrop(config, image);
      expect([pixels.width, pixels.height]).toEqual([config.crop_size, config.crop_size]);
      const mismatched = rgb(pixels).filter((v, k) => v !== expected[i].pixels[k]).length;
      expect({ size: sizes[i], mismatched }).toEqual({ size: sizes[i], mismatched: 0 });
      expect(normalise(config, pixels)).toEqual(expected[i].tensor);
    });
  }, 120_000); // Python imports torch
});

test("the crop box is the centred square of the shorter side", () => {
  expect(cropRegion(LITE, 520, 260)).toEqual([130, 0, 390, 260]);
  expect(cropBox(LITE, 400, 200)).toEqual({ x: 0.25, y: 0, width: 0.5, height: 1 });
  const [left, top, right, bottom] = cropRegion(CROPPING, 730, 730);
  expect([left, top]).toEqual([40, 40]); // (73 - 64) // 2 = 4 resized pixels, 10 of the image's
  expect([right - left, bottom - top]).toEqual([640, 640]);
});
