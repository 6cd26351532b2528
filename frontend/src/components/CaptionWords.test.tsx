import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import CaptionWords from "./CaptionWords";

function setup(pinned: number | null = null) {
  const onHover = vi.fn();
  const onPin = vi.fn();
  render(
    <CaptionWords tokens={["a", "dog", "runs"]} pinned={pinned} onHover={onHover} onPin={onPin} />,
  );
  return { onHover, onPin, words: screen.getAllByRole("button") };
}

test("each token is a button in a labelled group", () => {
  const { words } = setup();
  expect(screen.getByRole("group", { name: "Caption words" })).toBeInTheDocument();
  expect(words.map((w) => w.textContent)).toEqual(["a", "dog", "runs"]);
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
