import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { sentenceOf } from "../sentence";
import CaptionWords from "./CaptionWords";

function setup(pinned: number | null = null, caption = "a dog runs.", tokens = ["a", "dog", "runs", "."]) {
  const onHover = vi.fn();
  const onPin = vi.fn();
  render(<CaptionWords sentence={sentenceOf(caption, tokens)} pinned={pinned} onHover={onHover} onPin={onPin} />);
  return { onHover, onPin, words: screen.getAllByRole("button") };
}

test("the caption reads as a sentence, and each token of it is a button in a labelled group", () => {
  const { words } = setup();
  const group = screen.getByRole("group", { name: "Caption words" });
  expect(group).toHaveTextContent(/^A dog runs\.$/);
  expect(words.map((w) => w.textContent)).toEqual(["A", "dog", "runs", "."]);
});

test("a full stop the caption lacks is written after it, not as a word", () => {
  const { words } = setup(null, "a dog runs", ["a", "dog", "runs"]);
  expect(screen.getByRole("group", { name: "Caption words" })).toHaveTextContent(/^A dog runs\.$/);
  expect(words.map((w) => w.textContent)).toEqual(["A", "dog", "runs"]);
});

test("hovering a word shows its map, leaving hides it", async () => {
  const { onHover, words } = setup();
  await userEvent.hover(words[1]);
  expect(onHover).toHaveBeenLastCalledWith(1);
  await userEvent.unhover(words[1]);
  expect(onHover).toHaveBeenLastCalledWith(null);
});

test("the keyboard reaches every word, and Enter pins one", async () => {
  const { onHover, onPin } = setup();
  await userEvent.tab();
  await userEvent.tab();
  expect(onHover).toHaveBeenLastCalledWith(1);
  await userEvent.keyboard("{Enter}");
  expect(onPin).toHaveBeenCalledWith(1);
});

test("a tap on the pinned word unpins it", async () => {
  const { onPin, words } = setup(2);
  expect(words[2]).toHaveAttribute("aria-pressed", "true");
  await userEvent.click(words[2]);
  expect(onPin).toHaveBeenCalledWith(null);
});
