import { generate, repeatedNgramTokens, stepLogProbs } from "./generation";
import type { DecodingSettings, SpecialTokens, StepDecoder } from "./generation";

// Vocabulary: 0 end, 1 start, 2 unknown, then words.
const END = 0;
const START = 1;
const UNKNOWN = 2;
const special: SpecialTokens = { start: START, end: END, banned: [START, UNKNOWN] };
const VOCAB = 8;
const settings = (change: Partial<DecodingSettings> = {}): DecodingSettings => ({
  numBeams: 1,
  maxNewTokens: 10,
  minNewTokens: 1,
  lengthPenalty: 1,
  noRepeatNgramSize: 3,
  ...change,
});

/** A toy language model: `probabilities(prefix)` gives the next token's distribution after the
 * tokens fed so far (start token excluded); tokens it leaves out have probability 0. It keeps each row's prefix as its "cache", so a wrong
 * reorder gives wrong logits; each row's attention is [its prefix length, its last token]. */
class ToyDecoder implements StepDecoder {
  rows: number[][] = [[]];
  steps: number[][] = [];
  reorders: number[][] = [];
  constructor(private probabilities: (prefix: number[]) => Partial<Record<number, number>>) {}

  async step(tokens: number[]) {
    this.steps.push(tokens);
    if (tokens.length !== this.rows.length) throw new Error("rows and cache disagree");
    this.rows = this.rows.map((prefix, r) => (tokens[r] === START ? prefix : [...prefix, tokens[r]]));
    const logits = new Float32Array(this.rows.length * VOCAB).fill(-Infinity);
    const attention = new Float32Array(this.rows.length * 2);
    this.rows.forEach((prefix, r) => {
      for (const [token, p] of Object.entries(this.probabilities(prefix))) {
        logits[r * VOCAB + Number(token)] = Math.log(p!);
      }
      attention.set([prefix.length, tokens[r]], r * 2);
    });
    return { logits, attention };
  }

  reorder(rows: number[]) {
    this.reorders.push(rows);
    this.rows = rows.map((r) => this.rows[r]);
  }
}

test("greedy takes the likeliest token each step and stops at the end token", async () => {
  const toy = new ToyDecoder((prefix) =>
    prefix.length < 3 ? { [3 + prefix.length]: 0.9, 7: 0.1 } : { [END]: 0.9, 7: 0.1 },
  );
  const caption = await generate(toy, special, settings());
  expect(caption.ids).toEqual([3, 4, 5]);
  expect(caption.score).toBeCloseTo(4 * Math.log(0.9), 6); // the end token's included
  expect(toy.steps).toEqual([[START], [3], [4], [5]]);
  // Each token's attention is that of the step that wrote it (the step fed the token before).
  expect(caption.attention.map((a) => Array.from(a))).toEqual([[0, START], [1, 3], [2, 4]]);
});

test("banned ids and an empty caption are never produced", async () => {
  const toy = new ToyDecoder((prefix) =>
    prefix.length === 0 ? { [END]: 0.5, [START]: 0.2, [UNKNOWN]: 0.2, 6: 0.01 } : { [END]: 0.9 },
  );
  expect((await generate(toy, special, settings())).ids).toEqual([6]);
  const beam = new ToyDecoder((prefix) =>
    prefix.length === 0 ? { [END]: 0.5, [START]: 0.2, [UNKNOWN]: 0.2, 6: 0.01 } : { [END]: 0.9 },
  );
  expect((await generate(beam, special, settings({ numBeams: 3 }))).ids).toEqual([6]);
});

test("minNewTokens keeps the end token away until the caption is that long", async () => {
  const toy = new ToyDecoder(() => ({ [END]: 0.9, 5: 0.05, 6: 0.04 }));
  expect((await generate(toy, special, settings({ minNewTokens: 3, noRepeatNgramSize: 0 }))).ids).toEqual([5, 5, 5]);
});

test("a token that would repeat an n-gram is masked", async () => {
  expect(repeatedNgramTokens([3, 4, 3, 4], 3)).toEqual([3]);
  expect(repeatedNgramTokens([3, 4, 3], 3)).toEqual([]);
  expect(repeatedNgramTokens([3, 3, 3], 2)).toEqual([3, 3]); // as Python's list, repeats kept
  expect(repeatedNgramTokens([3, 4, 3, 4], 0)).toEqual([]);
  // "a b a b a ..." is what the model wants; the trigram rule turns the fifth token elsewhere.
  const alternate = (prefix: number[]) =>
    prefix.length >= 6 ? { [END]: 0.9 } : { [prefix.length % 2 ? 4 : 3]: 0.8, 7: 0.1 };
  expect((await generate(new ToyDecoder(alternate), special, settings())).ids).toEqual([3, 4, 3, 4, 7, 4]);
  expect(
    (await generate(new ToyDecoder(alternate), special, settings({ noRepeatNgramSize: 0 }))).ids,
  ).toEqual([3, 4, 3, 4, 3, 4]);
});

test("log-probabilities are a normalised distribution over the allowed tokens", () => {
  const logits = Float32Array.from([1, 2, 3, 4, 0, 0, 0, 0]);
  const logProbs = stepLogProbs(logits, [], 0, special, settings());
  expect(logProbs[END]).toBe(-Infinity);
  expect(logProbs[START]).toBe(-Infinity);
  expect(logProbs[UNKNOWN]).toBe(-Infinity);
  expect(Array.from(logProbs).reduce((s, v) => s + Math.exp(v), 0)).toBeCloseTo(1, 12);
  expect(logProbs[3] - logProbs[4]).toBeCloseTo(4, 6);
});

test("beam search finds the likelier caption that greedy misses", async () => {
  // 3 is the likelier first word, but everything after it is unsure; 4 leads to a sure caption.
  const model = (prefix: number[]) => {
    if (prefix.length === 0) return { 3: 0.55, 4: 0.45 };
    if (prefix[0] === 3) return prefix.length === 1 ? { 5: 0.3, 6: 0.3, 7: 0.4 } : { [END]: 1 };
    return prefix.length === 1 ? { 5: 0.95, 6: 0.05 } : { [END]: 0.95, 7: 0.05 };
  };
  expect((await generate(new ToyDecoder(model), special, settings())).ids[0]).toBe(3);
  const toy = new ToyDecoder(model);
  const best = await generate(toy, special, settings({ numBeams: 3 }));
  expect(best.ids).toEqual([4, 5]);
  // sum of log-probabilities (end token included) over the 3 tokens
  expect(best.score).toBeCloseTo((Math.log(0.45) + Math.log(0.95) + Math.log(0.95)) / 3, 2);
  // The first step feeds only the start token; then the cache follows the kept beams.
  expect(toy.steps[0]).toEqual([START]);
  expect(toy.reorders[0]).toEqual([0, 0]); // the two words the start token allows
  // The attention rows came from the beam that wrote each token.
  expect(best.attention.map((a) => Array.from(a))).toEqual([[0, START], [1, 4]]);
});

test("length normalisation: lengthPenalty 0 prefers the likeliest caption, 1 the best per token", async () => {
  // "3" has probability 0.5 * 0.6 = 0.3 (log -1.20, -0.60 a token); "4 5 6 7" 0.16 (log -1.83,
  // but -0.37 a token over its 5 tokens, the end token included).
  const table: Record<string, Record<number, number>> = {
    "": { 3: 0.5, 4: 0.5 },
    "3": { [END]: 0.6, 7: 0.4 },
    "4": { 5: 0.8, 7: 0.2 },
    "4 5": { 6: 0.8, 7: 0.2 },
    "4 5 6": { [END]: 0.5, 7: 0.5 },
  };
  const model = (prefix: number[]) => table[prefix.join(" ")] ?? { [END]: 1 };
  const total = await generate(new ToyDecoder(model), special, settings({ numBeams: 2, lengthPenalty: 0 }));
  expect(total.ids).toEqual([3]);
  expect(total.score).toBeCloseTo(Math.log(0.3), 6);
  const perToken = await generate(new ToyDecoder(model), special, settings({ numBeams: 2 }));
  expect(perToken.ids).toEqual([4, 5, 6, 7]);
  expect(perToken.score).toBeCloseTo(Math.log(0.16) / 5, 6);
});

test("a caption that reaches maxNewTokens is cut there", async () => {
  const endless = (prefix: number[]) => ({ [3 + (prefix.length % 5)]: 0.9 });
  const greedy = await generate(new ToyDecoder(endless), special, settings({ maxNewTokens: 4 }));
  expect(greedy.ids).toHaveLength(4);
  const beam = await generate(new ToyDecoder(endless), special, settings({ maxNewTokens: 4, numBeams: 2 }));
  expect(beam.ids).toHaveLength(4);
  expect(beam.attention).toHaveLength(4);
});
