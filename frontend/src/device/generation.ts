/** Greedy decoding and beam search over a step-by-step decoder, with the rules of the Python
 * package's `captioner.generation`: banned ids, no end token before `minNewTokens`, no repeated
 * n-gram, beam scores normalised by length ** lengthPenalty, and the same stopping rule, so that
 * the same logits give the same caption. */

export interface SpecialTokens {
  start: number;
  end: number;
  /** ids the decoder must never produce (the start token, the compact vocabulary's unknown) */
  banned: number[];
}

export interface DecodingSettings {
  numBeams: number;
  /** the most tokens a caption may get (already capped by the model's length) */
  maxNewTokens: number;
  minNewTokens: number;
  lengthPenalty: number;
  noRepeatNgramSize: number;
}

export interface StepOutput {
  /** rows x vocabulary, row-major */
  logits: Float32Array;
  /** rows x (whatever one row's cross-attention holds), row-major */
  attention: Float32Array;
}

/** One decoder step for a batch of rows (hypotheses of one image), each row with its own
 * self-attention cache. */
export interface StepDecoder {
  /** feed each row its last token; the cache grows by one position */
  step(tokens: number[]): Promise<StepOutput>;
  /** keep the rows `rows` (in that order, repeats allowed) of the cache for the next step */
  reorder(rows: number[]): void;
}

export interface Hypothesis {
  /** generated ids, end token excluded */
  ids: number[];
  /** sum of log-probabilities, length-normalised for beam search */
  score: number;
  /** per generated token, the cross-attention of the step that produced it */
  attention: Float32Array[];
}

export function generate(
  decoder: StepDecoder,
  special: SpecialTokens,
  settings: DecodingSettings,
): Promise<Hypothesis> {
  return settings.numBeams <= 1
    ? greedy(decoder, special, settings)
    : beamSearch(decoder, special, settings);
}

/** Tokens that would complete an n-gram already present in `ids`. */
export function repeatedNgramTokens(ids: number[], n: number): number[] {
  if (n <= 0 || ids.length < n) return [];
  const prefix = ids.slice(ids.length - n + 1);
  const banned: number[] = [];
  for (let i = 0; i + n <= ids.length; i++) {
    if (prefix.every((id, k) => ids[i + k] === id)) banned.push(ids[i + n - 1]);
  }
  return banned;
}

/** Log-probabilities of the next token for one row, with the tokens it may not take masked out
 * (in double precision; the softmax of float32 logits). */
export function stepLogProbs(
  logits: Float32Array,
  history: number[],
  step: number,
  special: SpecialTokens,
  settings: DecodingSettings,
): Float64Array {
  const out = Float64Array.from(logits);
  for (const id of special.banned) out[id] = -Infinity;
  if (step < settings.minNewTokens) out[special.end] = -Infinity;
  for (const id of repeatedNgramTokens(history, settings.noRepeatNgramSize)) out[id] = -Infinity;
  let max = -Infinity;
  for (const v of out) if (v > max) max = v;
  let sum = 0;
  for (const v of out) sum += Math.exp(v - max);
  const logSum = max + Math.log(sum);
  for (let i = 0; i < out.length; i++) out[i] -= logSum;
  return out;
}

function rowsOf(array: Float32Array, rows: number): Float32Array[] {
  const width = array.length / rows;
  return Array.from({ length: rows }, (_, r) => array.subarray(r * width, (r + 1) * width));
}

async function greedy(
  decoder: StepDecoder,
  special: SpecialTokens,
  settings: DecodingSettings,
): Promise<Hypothesis> {
  const ids: number[] = [];
  const attention: Float32Array[] = [];
  let score = 0;
  let last = special.start;
  for (let step = 0; step < settings.maxNewTokens; step++) {
    const output = await decoder.step([last]);
    const logProbs = stepLogProbs(output.logits, ids, step, special, settings);
    let chosen = 0;
    for (let i = 1; i < logProbs.length; i++) if (logProbs[i] > logProbs[chosen]) chosen = i;
    score += logProbs[chosen];
    if (chosen === special.end) break;
    ids.push(chosen);
    attention.push(output.attention.slice());
    last = chosen;
  }
  return { ids, score, attention };
}

interface Beam {
  ids: number[];
  attention: Float32Array[];
  score: number;
}

/** The best `count` (score, row, token) candidates over all rows, best first. */
function topCandidates(
  beams: Beam[],
  logProbs: Float64Array[],
  count: number,
): { score: number; row: number; token: number }[] {
  const top: { score: number; row: number; token: number }[] = [];
  beams.forEach((beam, row) => {
    if (beam.score === -Infinity) return;
    const values = logProbs[row];
    for (let token = 0; token < values.length; token++) {
      const score = beam.score + values[token];
      if (top.length === count && !(score > top[count - 1].score)) continue;
      let at = top.length;
      while (at > 0 && score > top[at - 1].score) at--;
      top.splice(at, 0, { score, row, token });
      if (top.length > count) top.pop();
    }
  });
  return top;
}

/** Beam search for one image: `numBeams` live hypotheses, one decoder call per step. Finished
 * hypotheses are scored sum(log p) / length ** lengthPenalty; the search stops once it has
 * `numBeams` of them and the best live beam, were it to end next step, would not beat the worst. */
async function beamSearch(
  decoder: StepDecoder,
  special: SpecialTokens,
  settings: DecodingSettings,
): Promise<Hypothesis> {
  const size = settings.numBeams;
  const normalised = (score: number, length: number) =>
    score / Math.max(length, 1) ** settings.lengthPenalty;
  // Only the first beam is live at the start (so the beams do not all repeat it): it alone is fed.
  let beams: Beam[] = [{ ids: [], attention: [], score: 0 }];
  let last = [special.start];
  const finished: Hypothesis[] = [];
  let done = false;
  for (let step = 0; step < settings.maxNewTokens; step++) {
    const output = await decoder.step(last);
    const logits = rowsOf(output.logits, beams.length);
    const attention = rowsOf(output.attention, beams.length);
    const logProbs = beams.map((beam, row) =>
      stepLogProbs(logits[row], beam.ids, step, special, settings),
    );
    const next: (Beam & { row: number; token: number })[] = [];
    for (const { score, row, token } of topCandidates(beams, logProbs, 2 * size)) {
      if (score === -Infinity || next.length === size) break;
      const parent = beams[row];
      const path = { ids: parent.ids, attention: parent.attention };
      if (token === special.end) {
        finished.push({ ...path, score: normalised(score, step + 1) });
        continue;
      }
      const ids = [...parent.ids, token];
      next.push({ ids, attention: [...parent.attention, attention[row].slice()], score, row, token });
    }
    if (finished.length >= size) {
      const worst = finished.map((h) => h.score).sort((a, b) => b - a)[size - 1];
      const best = next.length ? Math.max(...next.map((b) => b.score)) : -Infinity;
      // log-probabilities only fall, so a live beam is unlikely to end above this (as in HF)
      done = normalised(best, step + 2) <= worst;
    }
    if (done || next.length === 0) {
      done = true;
      break;
    }
    decoder.reorder(next.map((b) => b.row));
    beams = next;
    last = next.map((b) => b.token);
  }
  const pool = [...finished];
  if (!done) {
    // out of length: the live beams compete with the finished ones
    for (const beam of beams) pool.push({ ...beam, score: normalised(beam.score, settings.maxNewTokens) });
  }
  return pool.reduce((best, h) => (h.score > best.score ? h : best));
}
