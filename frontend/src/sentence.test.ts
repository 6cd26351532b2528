import shared from "./sentence-case.cases.json";
import { sentenceCase, sentenceOf } from "./sentence";

test.each(shared.cases)("%j as a sentence is %j, as --sentence-case writes it", (caption, sentence) => {
  expect(sentenceCase(caption)).toBe(sentence);
});

const shown = (caption: string, tokens: string[]) => {
  const { parts, tail } = sentenceOf(caption, tokens);
  return parts.map((p) => (p.space ? " " : "") + p.text).join("") + tail;
};

test("each token keeps its own stretch of the sentence; punctuation attaches to the word before", () => {
  const sentence = sentenceOf("a dog's ball, red.", ["a", "dog", "'s", "ball", ",", "red", "."]);
  expect(sentence.parts.map((p) => [p.token, p.text, p.space])).toEqual([
    [0, "A", false],
    [1, "dog", true],
    [2, "'s", false],
    [3, "ball", true],
    [4, ",", false],
    [5, "red", true],
    [6, ".", false],
  ]);
  expect(sentence.tail).toBe("");
  expect(sentence.text).toBe("A dog's ball, red.");
  expect(shown("a dog's ball, red.", ["a", "dog", "'s", "ball", ",", "red", "."])).toBe(sentence.text);
});

test("a caption without a full stop gets one after its last word, not as a word", () => {
  const sentence = sentenceOf("a skateboarder jumps", ["a", "skate", "boarder", "jumps"]);
  expect(sentence.parts.map((p) => p.text)).toEqual(["A", "skate", "boarder", "jumps"]);
  expect(sentence.parts.map((p) => p.space)).toEqual([false, true, false, true]);
  expect(sentence.tail).toBe(".");
  expect(sentence.text).toBe("A skateboarder jumps.");
});

test("tokens the text does not spell out are shown a word each, and the caption is what is copied", () => {
  const sentence = sentenceOf("a dog runs", ["a", "cat", "sits"]);
  expect(shown("a dog runs", ["a", "cat", "sits"])).toBe("A cat sits.");
  expect(sentence.text).toBe("A dog runs.");
  expect(sentenceOf("a dog runs fast", ["a", "dog", "runs"]).parts.map((p) => p.space)).toEqual([
    false,
    true,
    true,
  ]);
});

test("no tokens: an empty sentence", () => {
  expect(sentenceOf("", [])).toEqual({ parts: [], tail: "", text: "" });
});
