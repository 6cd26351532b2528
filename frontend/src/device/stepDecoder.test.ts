import { OnnxStepDecoder } from "./stepDecoder";
import type { RunStep, Tensor } from "./stepDecoder";

const LAYERS = 2;

/** A step graph of `LAYERS` layers whose caches hold, per row, the tokens fed so far (H = 1,
 * E = 1; layer l's keys hold token + 10 l, its values token + 10 l + 100); logits echo the row's
 * history in layer 1's values, so a row mixed up in any one cache shows. */
function fakeStep(calls: Record<string, Tensor>[]): RunStep {
  return async (feeds) => {
    calls.push(feeds);
    const ids = Array.from(feeds.ids.data as BigInt64Array, Number);
    const rows = ids.length;
    const out: Record<string, Tensor> = {};
    for (let l = 0; l < LAYERS; l++) {
      for (const [kind, offset] of [["key", 10 * l], ["value", 10 * l + 100]] as const) {
        const past = feeds[`past_${kind}_${l}`];
        const length = past.dims[2];
        const present = new Float32Array(rows * (length + 1));
        for (let r = 0; r < rows; r++) {
          present.set((past.data as Float32Array).subarray(r * length, (r + 1) * length), r * (length + 1));
          present[r * (length + 1) + length] = ids[r] + offset;
        }
        out[`present_${kind}_${l}`] = { data: present, dims: [rows, 1, length + 1, 1] };
      }
    }
    return {
      ...out,
      logits: out.present_value_1,
      cross_attention: { data: new Float32Array(rows * LAYERS), dims: [rows, LAYERS, 1, 1] },
    };
  };
}

/** One image's cross keys and values: (1, H = 1, T = 2, E = 1) per layer, distinct per tensor. */
function image(): Record<string, Tensor> {
  const tensors: Record<string, Tensor> = {};
  for (let l = 0; l < LAYERS; l++) {
    tensors[`cross_key_${l}`] = { data: Float32Array.from([l, l + 0.5]), dims: [1, 1, 2, 1] };
    tensors[`cross_value_${l}`] = { data: Float32Array.from([-l, -l - 0.5]), dims: [1, 1, 2, 1] };
  }
  return tensors;
}

const values = (t: Tensor) => Array.from(t.data as Float32Array);

test("each layer's cache starts empty, grows a position a step and follows the kept rows", async () => {
  const calls: Record<string, Tensor>[] = [];
  const decoder = new OnnxStepDecoder(fakeStep(calls), image(), LAYERS);
  await decoder.step([1]);
  for (let l = 0; l < LAYERS; l++) {
    expect(calls[0][`past_key_${l}`].dims).toEqual([1, 1, 0, 1]);
    expect(calls[0][`past_value_${l}`].dims).toEqual([1, 1, 0, 1]);
    expect(calls[0][`cross_key_${l}`].dims).toEqual([1, 1, 2, 1]);
  }
  expect(Array.from(calls[0].ids.data as BigInt64Array)).toEqual([1n]);
  expect(Object.keys(calls[0]).sort()).toEqual(
    ["ids", ...[0, 1].flatMap((l) => ["key", "value"].flatMap((k) => [`past_${k}_${l}`, `cross_${k}_${l}`]))].sort(),
  );

  decoder.reorder([0, 0, 0]); // one row becomes three beams
  await decoder.step([4, 5, 6]);
  expect(calls[1].past_key_0.dims).toEqual([3, 1, 1, 1]);
  expect(values(calls[1].past_key_1)).toEqual([11, 11, 11]);
  // every layer's image memory fed once for all the beams (never copied per row)
  expect(calls[1].cross_key_1.dims).toEqual([1, 1, 2, 1]);
  expect(values(calls[1].cross_key_1)).toEqual([1, 1.5]);
  expect(values(calls[1].cross_value_0)).toEqual([-0, -0.5]);

  decoder.reorder([2, 0]);
  const out = await decoder.step([9, 9]);
  // row 0 descends from the old row 2 (1, 6), row 1 from the old row 0 (1, 4), in every cache
  expect(Array.from(out.logits)).toEqual([111, 116, 119, 111, 114, 119]);
  expect(values(calls[2].past_key_0)).toEqual([1, 6, 1, 4]);
  expect(values(calls[2].past_value_0)).toEqual([101, 106, 101, 104]);
  expect(calls[2].cross_value_1.dims).toEqual([1, 1, 2, 1]);
});

test("feeding a different number of tokens than rows is an error, not a silent mix-up", async () => {
  const decoder = new OnnxStepDecoder(fakeStep([]), image(), LAYERS);
  await expect(decoder.step([1, 2])).rejects.toThrow("2 tokens for 1 rows");
});

test("an image graph without a layer's keys, or a step graph without an output, is said", async () => {
  const partial = image();
  delete partial.cross_value_1;
  expect(() => new OnnxStepDecoder(fakeStep([]), partial, LAYERS)).toThrow(
    "the image graph gave no cross_value_1 (a model of 2 layers)",
  );
  const withoutLogits: RunStep = async (feeds) => {
    const { logits: _, ...rest } = await fakeStep([])(feeds);
    return rest;
  };
  await expect(new OnnxStepDecoder(withoutLogits, image(), LAYERS).step([1])).rejects.toThrow(
    "the step graph gave no logits",
  );
});
