/** The exported `decoder_step` graph as a `StepDecoder`: it keeps the self-attention cache of
 * every row between steps and the image's cross-attention keys and values, repeated per row. */

import type { StepDecoder, StepOutput } from "./generation";

/** A tensor as the graphs take and give them: float32 or int64 data with its shape. */
export interface Tensor {
  data: Float32Array | BigInt64Array;
  dims: readonly number[];
}

/** One run of the step graph: `ids`, `past_kv`, `cross_kv` in; `logits`, `present_kv`,
 * `cross_attention` out. */
export type RunStep = (feeds: Record<"ids" | "past_kv" | "cross_kv", Tensor>) => Promise<Record<string, Tensor>>;

export class OnnxStepDecoder implements StepDecoder {
  private rows = 1;
  private past: Tensor;
  private crossRows = 1;
  private cross: Tensor;

  /** `crossKv`: one image's (1, L, 2, H, T, E) keys and values from the image graph. */
  constructor(
    private readonly run: RunStep,
    private readonly crossKv: Tensor,
  ) {
    const [, layers, two, heads, , headDim] = crossKv.dims;
    this.past = { data: new Float32Array(0), dims: [1, layers, two, heads, 0, headDim] };
    this.cross = crossKv;
  }

  async step(tokens: number[]): Promise<StepOutput> {
    if (tokens.length !== this.rows) throw new Error(`${tokens.length} tokens for ${this.rows} rows`);
    if (this.crossRows !== this.rows) {
      this.cross = repeatRows(this.crossKv, this.rows);
      this.crossRows = this.rows;
    }
    const ids: Tensor = { data: BigInt64Array.from(tokens, BigInt), dims: [tokens.length, 1] };
    const out = await this.run({ ids, past_kv: this.past, cross_kv: this.cross });
    this.past = out.present_kv;
    return { logits: out.logits.data as Float32Array, attention: out.cross_attention.data as Float32Array };
  }

  reorder(rows: number[]): void {
    const data = this.past.data as Float32Array;
    const width = data.length / this.rows;
    const kept = new Float32Array(width * rows.length);
    rows.forEach((row, i) => kept.set(data.subarray(row * width, (row + 1) * width), i * width));
    this.past = { data: kept, dims: [rows.length, ...this.past.dims.slice(1)] };
    this.rows = rows.length;
  }
}

function repeatRows(tensor: Tensor, rows: number): Tensor {
  const data = tensor.data as Float32Array;
  const out = new Float32Array(data.length * rows);
  for (let r = 0; r < rows; r++) out.set(data, r * data.length);
  return { data: out, dims: [rows, ...tensor.dims.slice(1)] };
}
