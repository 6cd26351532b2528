/** Captions written as sentences: the rule of `captioner caption --sentence-case`
 * (`CollectionConfig.finish_text` in src/captioner/collection/job.py), and the caption's tokens
 * laid over that sentence so each word stays a thing to point at. sentence-case.cases.json holds
 * cases that both this file's test and the Python test (tests/test_web_site.py) check. */

/** `text` with its first character (a code point, as Python's `text[0]`) upper-cased. */
function capitalised(text: string): string {
  const [first] = text;
  return first === undefined ? text : first.toUpperCase() + text.slice(first.length);
}

/** `text` ending in ".", "!" or "?": a full stop is added when it ends in anything else. */
function withFullStop(text: string): string {
  return text === "" || ".!?".includes(text.at(-1)!) ? text : text + ".";
}

/** The caption as a sentence: capital first letter, and a full stop unless it ends in . ! or ?
 * (an empty caption stays empty). */
export function sentenceCase(text: string): string {
  return withFullStop(capitalised(text));
}

/** One token's stretch of the sentence. */
export interface SentencePart {
  /** the token's index in the caption */
  token: number;
  /** what is shown for it */
  text: string;
  /** whether a space comes before it (punctuation and word pieces attach to the word before) */
  space: boolean;
}

export interface Sentence {
  parts: SentencePart[];
  /** what the sentence adds after the last token (the full stop), or "" */
  tail: string;
  /** the whole sentence, as copied */
  text: string;
}

/** `caption` (the detokenized text) as a sentence, each token in it where the text has it: "a
 * dog runs ." as tokens, "a dog runs." as text, gives "A", " dog", " runs", "." and no tail.
 * Tokens the text does not spell out in order are shown one a word. */
export function sentenceOf(caption: string, tokens: string[]): Sentence {
  const text = sentenceCase(caption);
  const head = capitalised(caption);
  const tail = text.slice(head.length);
  const parts: SentencePart[] = [];
  let at = 0;
  for (const [i, token] of tokens.entries()) {
    const start = head.slice(at).search(/\S|$/) + at;
    const end = start + token.length;
    if (head.slice(start, end).toLowerCase() !== token.toLowerCase()) break;
    parts.push({ token: i, text: head.slice(start, end), space: start > at || (i > 0 && token === "") });
    at = end;
  }
  if (parts.length === tokens.length && head.slice(at).trim() === "") return { parts, tail, text };
  // The text does not spell out these tokens: a word per token, and the caption's sentence to
  // copy.
  const words = tokens.map((token, i) => (i === 0 ? capitalised(token) : token)).join(" ");
  return {
    parts: tokens.map((token, i) => ({ token: i, text: i === 0 ? capitalised(token) : token, space: i > 0 })),
    tail: withFullStop(words).slice(words.length),
    text,
  };
}
