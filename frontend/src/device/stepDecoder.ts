/** The exported `decoder_step` graph as a `StepDecoder`: it keeps every layer's self-attention
 * cache of every row between steps, and feeds the image's cross-attention keys and values per
 * layer once for all rows (the graph shares an image among its consecutive rows: the beams). One
 * tensor per layer and kind (not one packed tensor) so that ONNX Runtime reads the image memory
 * in place instead of copying all of it every step. */

import type { StepDecoder, StepOutput } from "./generation";

/** A tensor as the graphs take and give them: float32 or int64 data with its shape. */
export interface Tensor {
  data: Float32Array | BigInt64Array;
  dims: readonly number[];
}

/** One run of the step graph: `ids`, `past_key_{l}`, `past_value_{l}`, `cross_key_{l}`,
 * `cross_value_{l}` in; `logits`, `present_key_{l}`, `present_value_{l}`, `cross_attention` out. */
export type RunStep = (feeds: Record<string, Tensor>) => Promise<Record<string, Tensor>>;

/** The names of layer `layer`'s tensors of `kind` ("past", "present" or "cross"). */
const keyName = (kind: string, layer: number) => `${kind}_key_${layer}`;
const valueName = (kind: string, layer: number) => `${kind}_value_${layer}`;

export class OnnxStepDecoder implements StepDecoder {
  private rows = 1;
  /** past_key_{l} and past_value_{l}, (rows, H, P, E) each */
  private past: Record<string, Tensor> = {};
  /** cross_key_{l} and cross_value_{l}, (1, H, T, E) each: every row reads the one image */
  private cross: Record<string, Tensor>;

  /** `image`: the image graph's outputs for one image, `cross_key_{l}` and `cross_value_{l}`
   * ((1, H, T, E) each) for each of the decoder's `layers`. */
  constructor(
    private readonly run: RunStep,
    image: Record<string, Tensor>,
    private readonly layers: number,
  ) {
    this.cross = {};
    for (let l = 0; l < layers; l++) {
      for (const name of [keyName("cross", l), valueName("cross", l)]) {
        const tensor = image[name];
        if (!tensor) throw new Error(`the image graph gave no ${name} (a model of ${layers} layers)`);
        if (tensor.dims.length !== 4 || tensor.dims[0] !== 1) {
          throw new Error(`${name} is (${tensor.dims}), not one image's (1, heads, tokens, width)`);
        }
        this.cross[name] = tensor;
      }
      const [, heads, , width] = this.cross[keyName("cross", l)].dims;
      const empty = (): Tensor => ({ data: new Float32Array(0), dims: [1, heads, 0, width] });
      this.past[keyName("past", l)] = empty();
      this.past[valueName("past", l)] = empty();
    }
  }

  async step(tokens: number[]): Promise<StepOutput> {
    if (tokens.length !== this.rows) throw new Error(`${tokens.length} tokens for ${this.rows} rows`);
    const ids: Tensor = { data: BigInt64Array.from(tokens, BigInt), dims: [tokens.length, 1] };
    const out = await this.run({ ids, ...this.past, ...this.cross });
    for (let l = 0; l < this.layers; l++) {
      this.past[keyName("past", l)] = output(out, keyName("present", l));
      this.past[valueName("past", l)] = output(out, valueName("present", l));
    }
    return {
      logits: output(out, "logits").data as Float32Array,
      attention: output(out, "cross_attention").data as Float32Array,
    };
  }

  reorder(rows: number[]): void {
    for (const [name, tensor] of Object.entries(this.past)) this.past[name] = takeRows(tensor, rows);
    this.rows = rows.length;
  }
}

function output(outputs: Record<string, Tensor>, name: string): Tensor {
  const tensor = outputs[name];
  if (!tensor) throw new Error(`the step graph gave no ${name}`);
  return tensor;
}

/** `tensor`'s rows (its first axis) in the order `rows` names them, repeats allowed. */
function takeRows(tensor: Tensor, rows: number[]): Tensor {
  const data = tensor.data as Float32Array;
  const width = data.length / tensor.dims[0];
  const kept = new Float32Array(width * rows.length);
  rows.forEach((row, i) => kept.set(data.subarray(row * width, (row + 1) * width), i * width));
  return { data: kept, dims: [rows.length, ...tensor.dims.slice(1)] };
}
