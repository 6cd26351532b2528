/** The encoder's preprocessing, as `captioner.transforms.Preprocess` does it with Pillow: the
 * region that resizing the shorter side to `resize_size` and centre-cropping `crop_size` keeps,
 * resampled straight to (crop, crop) with Pillow's filters and fixed-point arithmetic (and its
 * integer box reduction first for large images), then normalised. The same decoded pixels give
 * the same bytes as Pillow, so the same caption as the server. */

import type { CropBox } from "../api";

export interface PreprocessConfig {
  crop_size: number;
  resize_size: number;
  mean: number[];
  std: number[];
  resample: "bicubic" | "bilinear";
}

/** 8-bit RGBA pixels, row-major (as canvas `ImageData` holds them); alpha is ignored. */
export interface Pixels {
  width: number;
  height: number;
  data: Uint8Array | Uint8ClampedArray;
}

// An image over this many times the target size is first shrunk by an integer box filter.
const REDUCING_GAP = 3.0;
const FILTERS = {
  bicubic: { support: 2.0, weight: bicubic },
  bilinear: { support: 1.0, weight: (x: number) => Math.max(0, 1 - Math.abs(x)) },
};
const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff !== 0.5) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The size the whole image would have with its shorter side resized to `resize_size`. */
export function resizedSize(config: PreprocessConfig, width: number, height: number): [number, number] {
  const scale = config.resize_size / Math.min(width, height);
  return [
    Math.max(config.resize_size, roundHalfEven(width * scale)),
    Math.max(config.resize_size, roundHalfEven(height * scale)),
  ];
}

/** (left, top, right, bottom) in the image's own pixels: the part the encoder sees. */
export function cropRegion(
  config: PreprocessConfig,
  width: number,
  height: number,
): [number, number, number, number] {
  const [resizedWidth, resizedHeight] = resizedSize(config, width, height);
  const left = Math.floor((resizedWidth - config.crop_size) / 2);
  const top = Math.floor((resizedHeight - config.crop_size) / 2);
  const xScale = width / resizedWidth;
  const yScale = height / resizedHeight;
  return [
    left * xScale,
    top * yScale,
    (left + config.crop_size) * xScale,
    (top + config.crop_size) * yScale,
  ];
}

/** The part the encoder sees, as fractions of the image (where the attention grid lies). */
export function cropBox(config: PreprocessConfig, width: number, height: number): CropBox {
  const [left, top, right, bottom] = cropRegion(config, width, height);
  return { x: left / width, y: top / height, width: (right - left) / width, height: (bottom - top) / height };
}

/** Pillow's `precompute_coeffs`: for each output pixel, the first input pixel read and the
 * fixed-point weights. `in0`/`in1` are float32, as Pillow's box is. */
function coefficients(inSize: number, in0: number, in1: number, outSize: number, resample: PreprocessConfig["resample"]) {
  const filter = FILTERS[resample];
  const scale = Math.fround(Math.fround(in1) - Math.fround(in0)) / outSize;
  const filterScale = Math.max(scale, 1.0);
  const inverseScale = 1.0 / filterScale;
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = Math.fround(in0) + (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = new Float64Array(xmax);
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = filter.weight((x + xmin - center + 0.5) * inverseScale);
      total += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

function clip8(value: number): number {
  const v = Math.floor(value / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's `Image.resize(size, resample, box)` for 8-bit RGB(A): horizontal pass over the rows
 * the vertical pass reads, rounded to 8 bits, then the vertical pass. */
export function resample(
  image: Pixels,
  box: [number, number, number, number],
  outWidth: number,
  outHeight: number,
  filter: PreprocessConfig["resample"],
): Pixels {
  const vertical = coefficients(image.height, box[1], box[3], outHeight, filter);
  const needHorizontal = outWidth !== image.width || box[0] !== 0 || Math.fround(box[2]) !== outWidth;
  const needVertical = outHeight !== image.height || box[1] !== 0 || Math.fround(box[3]) !== outHeight;
  let source = image;
  let rowOffset = 0;
  if (needHorizontal) {
    const first = vertical.bounds[0];
    const last = vertical.bounds[outHeight * 2 - 2] + vertical.bounds[outHeight * 2 - 1];
    const { bounds, weights, ksize } = coefficients(image.width, box[0], box[2], outWidth, filter);
    const rows = last - first;
    const out = new Uint8Array(outWidth * rows * 4);
    for (let y = 0; y < rows; y++) {
      const row = (y + first) * image.width * 4;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const w = weights[xx * ksize + x];
          const at = row + (x + xmin) * 4;
          s0 += image.data[at] * w;
          s1 += image.data[at + 1] * w;
          s2 += image.data[at + 2] * w;
        }
        const o = (y * outWidth + xx) * 4;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
        out[o + 3] = 255;
      }
    }
    source = { width: outWidth, height: rows, data: out };
    rowOffset = first;
  }
  if (!needVertical) return source;
  const { bounds, weights, ksize } = vertical;
  const out = new Uint8Array(source.width * outHeight * 4);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2] - rowOffset;
    const ymax = bounds[yy * 2 + 1];
    for (let xx = 0; xx < source.width; xx++) {
      let s0 = 1 << (PRECISION_BITS - 1);
      let s1 = s0;
      let s2 = s0;
      for (let y = 0; y < ymax; y++) {
        const w = weights[yy * ksize + y];
        const at = ((y + ymin) * source.width + xx) * 4;
        s0 += source.data[at] * w;
        s1 += source.data[at + 1] * w;
        s2 += source.data[at + 2] * w;
      }
      const o = (yy * source.width + xx) * 4;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
      out[o + 3] = 255;
    }
  }
  return { width: source.width, height: outHeight, data: out };
}

/** Pillow's `Image.reduce(factors, box)`: the mean of each factor_x x factor_y block (partial
 * blocks at the right and bottom edges average what they have), with its rounding. */
export function reduce(image: Pixels, factors: [number, number], box: [number, number, number, number]): Pixels {
  const [fx, fy] = factors;
  const [left, top, right, bottom] = box;
  const width = Math.ceil((right - left) / fx);
  const height = Math.ceil((bottom - top) / fy);
  const out = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    const y0 = top + y * fy;
    const y1 = Math.min(y0 + fy, bottom);
    for (let x = 0; x < width; x++) {
      const x0 = left + x * fx;
      const x1 = Math.min(x0 + fx, right);
      const count = (y1 - y0) * (x1 - x0);
      // (UINT32)((float)2^32 / (256 * count)), and (sum + count / 2) * multiplier >> 24
      const multiplier = Math.trunc(Math.fround(4294967296 / (256 * count)));
      const amend = Math.floor(count / 2);
      const o = (y * width + x) * 4;
      for (let c = 0; c < 3; c++) {
        let sum = amend;
        for (let yy = y0; yy < y1; yy++) {
          for (let xx = x0; xx < x1; xx++) sum += image.data[(yy * image.width + xx) * 4 + c];
        }
        out[o + c] = Math.floor(((sum * multiplier) % 4294967296) / 16777216);
      }
      out[o + 3] = 255;
    }
  }
  return { width, height, data: out };
}

function crop(image: Pixels, [left, top, right, bottom]: [number, number, number, number]): Pixels {
  const width = right - left;
  const data = new Uint8Array(width * (bottom - top) * 4);
  for (let y = top; y < bottom; y++) {
    data.set(image.data.subarray((y * image.width + left) * 4, (y * image.width + right) * 4), (y - top) * width * 4);
  }
  return { width, height: bottom - top, data };
}

/** `_region_read`: the part of the image that resampling `box` to `size` reads, shrunk by the
 * integer `factors` with its blocks where reducing the whole image puts them, and `box` in that
 * part's coordinates. */
function regionRead(
  image: Pixels,
  box: [number, number, number, number],
  factors: [number, number],
  size: number,
  support: number,
): [Pixels, [number, number, number, number]] {
  const edges = (
    [
      [box[0], box[2], factors[0], image.width],
      [box[1], box[3], factors[1], image.height],
    ] as const
  ).map(([low, high, factor, length]) => {
    const scale = Math.max((high - low) / factor / size, 1.0); // the filter widens when shrinking
    const margin = (support * scale + 1) * factor;
    const start = Math.max(0, Math.floor((low - margin) / factor) * factor);
    return [start, Math.min(length, Math.ceil((high + margin) / factor) * factor)];
  });
  const region: [number, number, number, number] = [edges[0][0], edges[1][0], edges[0][1], edges[1][1]];
  const [fx, fy] = factors;
  const part = fx !== 1 || fy !== 1 ? reduce(image, factors, region) : crop(image, region);
  return [part, [(box[0] - region[0]) / fx, (box[1] - region[1]) / fy, (box[2] - region[0]) / fx, (box[3] - region[1]) / fy]];
}

/** `Preprocess.resize_and_crop`: the (crop, crop) pixels the encoder sees. */
export function resizeAndCrop(config: PreprocessConfig, image: Pixels): Pixels {
  const size = config.crop_size;
  const [resizedWidth, resizedHeight] = resizedSize(config, image.width, image.height);
  const factors: [number, number] = [
    Math.trunc(image.width / resizedWidth / REDUCING_GAP) || 1,
    Math.trunc(image.height / resizedHeight / REDUCING_GAP) || 1,
  ];
  const region = cropRegion(config, image.width, image.height);
  const support = FILTERS[config.resample].support;
  const [part, [left, top, right, bottom]] = regionRead(image, region, factors, size, support);
  // Horizontal pass, then vertical, in two calls, as the Python side does it.
  const rows = resample(part, [left, 0, right, part.height], size, part.height, config.resample);
  return resample(rows, [0, top, size, bottom], size, size, config.resample);
}

/** (1, 3, crop, crop) float32, (pixel / 255 - mean) / std, each step rounded to float32 as
 * numpy does it. */
export function normalise(config: PreprocessConfig, image: Pixels): Float32Array {
  const plane = image.width * image.height;
  const out = new Float32Array(3 * plane);
  const mean = config.mean.map(Math.fround);
  const std = config.std.map(Math.fround);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const scaled = Math.fround(image.data[i * 4 + c] / 255);
      out[c * plane + i] = Math.fround(Math.fround(scaled - mean[c]) / std[c]);
    }
  }
  return out;
}
