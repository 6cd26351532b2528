import { OnnxStepDecoder } from "./stepDecoder";
import type { RunStep, Tensor } from "./stepDecoder";

/** A step graph whose cache holds, per row, the tokens fed so far (one float per position,
 * L = 1, 2 = 1 standing in for keys and values, H = 1, E = 1); logits echo the row's history. */
function fakeStep(calls: Record<string, Tensor>[]): RunStep {
  return async (feeds) => {
    calls.push(feeds);
    const [rows, , , , past] = feeds.past_kv.dims;
    const ids = Array.from(feeds.ids.data as BigInt64Array, Number);
    const present = new Float32Array(rows * (past + 1));
    for (let r = 0; r < rows; r++) {
      present.set((feeds.past_kv.data as Float32Array).subarray(r * past, (r + 1) * past), r * (past + 1));
      present[r * (past + 1) + past] = ids[r];
    }
    return {
      logits: { data: present, dims: [rows, past + 1] },
      present_kv: { data: present, dims: [rows, 1, 1, 1, past + 1, 1] },
      cross_attention: { data: new Float32Array(rows), dims: [rows, 1, 1, 1] },
    };
  };
}

test("the cache starts empty, grows a position a step and follows the kept rows", async () => {
  const calls: Record<string, Tensor>[] = [];
  const cross = { data: Float32Array.from([7, 8]), dims: [1, 1, 1, 1, 2, 1] };
  const decoder = new OnnxStepDecoder(fakeStep(calls), cross);
  await decoder.step([1]);
  expect(calls[0].past_kv.dims).toEqual([1, 1, 1, 1, 0, 1]);
  expect(Array.from(calls[0].ids.data as BigInt64Array)).toEqual([1n]);
  decoder.reorder([0, 0, 0]); // one row becomes three beams
  await decoder.step([4, 5, 6]);
  expect(calls[1].past_kv.dims).toEqual([3, 1, 1, 1, 1, 1]);
  expect(calls[1].cross_kv.dims).toEqual([3, 1, 1, 1, 2, 1]); // the image repeated per row
  expect(Array.from(calls[1].cross_kv.data as Float32Array)).toEqual([7, 8, 7, 8, 7, 8]);
  decoder.reorder([2, 0]);
  const out = await decoder.step([9, 9]);
  // row 0 descends from the old row 2 (1, 6), row 1 from the old row 0 (1, 4)
  expect(Array.from(out.logits)).toEqual([1, 6, 9, 1, 4, 9]);
});

test("feeding a different number of tokens than rows is an error, not a silent mix-up", async () => {
  const decoder = new OnnxStepDecoder(fakeStep([]), { data: new Float32Array(2), dims: [1, 1, 1, 1, 2, 1] });
  await expect(decoder.step([1, 2])).rejects.toThrow("2 tokens for 1 rows");
});
