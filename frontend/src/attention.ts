/** Attention maps: picking one out of the API's response, and painting it as a heatmap. */

import type { AttentionMaps } from "./api";

/** One token's map (grid_h * grid_w); `null` layer or head means the mean over all of them. */
export function selectMap(
  maps: AttentionMaps,
  token: number,
  layer: number | null,
  head: number | null,
): number[] {
  if (layer === null && head === null) return maps.mean[token];
  const layers = layer === null ? maps.per_head[token] : [maps.per_head[token][layer]];
  const rows = layers.flatMap((heads) => (head === null ? heads : [heads[head]]));
  const out = new Array<number>(maps.grid_h * maps.grid_w).fill(0);
  for (const row of rows) row.forEach((value, i) => (out[i] += value / rows.length));
  return out;
}

/** Values rescaled to [0, 1] (all zeros for a flat map), so weak maps still show their shape. */
export function normalise(values: number[]): number[] {
  const low = Math.min(...values);
  const span = Math.max(...values) - low;
  return values.map((v) => (span > 0 ? (v - low) / span : 0));
}

// The same perceptual ramp as captioner.attention (dark purple -> orange -> pale yellow).
const RAMP: [number, number, number, number][] = [
  [0.0, 0, 0, 4],
  [0.25, 87, 16, 110],
  [0.5, 188, 55, 84],
  [0.75, 249, 142, 9],
  [1.0, 252, 255, 164],
];

export function colour(value: number): [number, number, number] {
  const v = Math.min(1, Math.max(0, value));
  for (let i = 1; i < RAMP.length; i++) {
    const [p1, ...c1] = RAMP[i];
    if (v <= p1) {
      const [p0, ...c0] = RAMP[i - 1];
      const t = (v - p0) / (p1 - p0);
      return c0.map((c, k) => Math.round(c + (c1[k] - c) * t)) as [number, number, number];
    }
  }
  return [252, 255, 164];
}

/** Paint `values` (grid_h x grid_w, row-major) onto `canvas`, smoothly upsampled. Weak cells
 * are more transparent, so the photo shows through where the model did not look. */
export function drawHeatmap(
  canvas: HTMLCanvasElement,
  values: number[] | null,
  gridH: number,
  gridW: number,
): void {
  const context = canvas.getContext("2d");
  if (!context) return; // no canvas support (tests in jsdom)
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!values) return;
  const cells = document.createElement("canvas");
  cells.width = gridW;
  cells.height = gridH;
  const cellContext = cells.getContext("2d");
  if (!cellContext) return;
  const pixels = cellContext.createImageData(gridW, gridH);
  normalise(values).forEach((v, i) => {
    const [r, g, b] = colour(v);
    pixels.data.set([r, g, b, Math.round(255 * (0.3 + 0.5 * v))], i * 4);
  });
  cellContext.putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(cells, 0, 0, canvas.width, canvas.height);
}
