import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { captionResult, modelInfo } from "../test-data";
import App from "./App";

type Handler = (form: FormData) => Response | Promise<Response>;

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

/** A fake server: health and model info answer; /api/caption answers with `onCaption`. */
function serve(onCaption: Handler) {
  const fetchMock = vi.fn(async (url: string, init?: RequestInit) => {
    if (url === "/api/health") return json({ status: "ok", model: "bundled" });
    if (url === "/api/model") return json(modelInfo);
    if (url === "/api/caption") return onCaption(init!.body as FormData);
    return json({ error: "not found" }, 404);
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

const photo = () => new File([new Uint8Array([1, 2, 3])], "dog.jpg", { type: "image/jpeg" });
const captionCalls = (fetchMock: ReturnType<typeof serve>) =>
  fetchMock.mock.calls.filter(([url]) => url === "/api/caption");

afterEach(() => vi.unstubAllGlobals());

test("a chosen photo is captioned, with words, alt text and the model's metrics", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  expect(await screen.findByText(/efficientnet-lite2 encoder, 6-layer decoder/)).toHaveTextContent(
    "CIDEr 0.612",
  );
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());

  const words = await screen.findAllByRole("button", { pressed: false, name: /^(a|dog|runs)$/ });
  expect(words.map((w) => w.textContent)).toEqual(["a", "dog", "runs"]);
  expect(screen.getByRole("img", { name: "Photo: a dog runs" })).toBeInTheDocument();
  const form = captionCalls(fetchMock)[0][1]!.body as FormData;
  expect((form.get("file") as File).name).toBe("dog.jpg");
  expect(form.get("beam_size")).toBe("3");
  expect(form.get("attention")).toBe("true");
});

test("hovering a word lays that word's heatmap over the photo", async () => {
  serve(() => json(captionResult()));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  const dog = await screen.findByRole("button", { name: "dog" });
  const heatmap = screen.getByTestId("heatmap");
  expect(heatmap).toHaveClass("invisible");
  await userEvent.hover(dog);
  expect(heatmap).toHaveAttribute("data-token", "1");
  expect(heatmap).toHaveClass("visible");
  // The heatmap covers the centre crop the model saw.
  expect(heatmap.style.left).toBe("12.5%");
  expect(heatmap.style.width).toBe("75%");
});

test("layer and head selectors follow the model; mean of all by default", async () => {
  serve(() => json(captionResult()));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "dog" });
  const layer = screen.getByLabelText("Attention layer") as HTMLSelectElement;
  expect(layer.value).toBe("mean");
  expect(Array.from(layer.options).map((o) => o.text)).toEqual([
    "All layers (mean)",
    "Layer 1",
    "Layer 2",
  ]);
  expect(screen.getByLabelText("Attention head")).toHaveValue("mean");
});

test("switching to greedy captions the photo again with beam_size 1", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "dog" });
  await userEvent.selectOptions(screen.getByLabelText("Decoding"), "Greedy");
  await waitFor(() => expect(captionCalls(fetchMock)).toHaveLength(2));
  expect((captionCalls(fetchMock)[1][1]!.body as FormData).get("beam_size")).toBe("1");
});

test("a file the server refuses shows its message", async () => {
  serve(() => json({ error: "the uploaded data is not an image in a supported format" }, 415));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  expect(await screen.findByRole("alert")).toHaveTextContent(
    "That file can't be captioned: the uploaded data is not an image in a supported format",
  );
  // No broken image: the drop target is back.
  expect(screen.queryByRole("img")).not.toBeInTheDocument();
  expect(screen.getByText("Drop a photo anywhere on the page")).toBeInTheDocument();
});

test("while the caption is written, a loading state shows", async () => {
  let answer: (response: Response) => void = () => {};
  serve(() => new Promise((resolve) => (answer = resolve)));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  expect(await screen.findByRole("status")).toHaveTextContent("Writing a caption");
  expect(screen.getByRole("img", { name: "Photo being captioned: dog.jpg" })).toBeInTheDocument();
  await act(async () => answer(json(captionResult())));
  expect(screen.queryByRole("status")).not.toBeInTheDocument();
});

test("a server that is down is reported, and Retry reconnects", async () => {
  vi.stubGlobal("fetch", vi.fn().mockRejectedValue(new TypeError("Failed to fetch")));
  render(<App />);
  expect(await screen.findByRole("alert")).toHaveTextContent("Can't reach the captioning server");
  serve(() => json(captionResult()));
  await userEvent.click(screen.getByRole("button", { name: "Retry" }));
  await waitFor(() => expect(screen.queryByRole("alert")).not.toBeInTheDocument());
});

test("a photo dropped anywhere on the page is captioned", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  const dataTransfer = { files: [photo()], types: ["Files"] };
  fireEvent.dragEnter(window, { dataTransfer });
  expect(screen.getByText("Drop the photo to caption it")).toBeInTheDocument();
  fireEvent.drop(window, { dataTransfer });
  expect(screen.queryByText("Drop the photo to caption it")).not.toBeInTheDocument();
  await screen.findByRole("button", { name: "dog" });
  expect(captionCalls(fetchMock)).toHaveLength(1);
});

test("a pasted image is captioned", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  fireEvent.paste(window, { clipboardData: { files: [photo()] } });
  await screen.findByRole("button", { name: "dog" });
  expect((captionCalls(fetchMock)[0][1]!.body as FormData).get("file")).toBeInstanceOf(File);
});

test("the webcam view says so when there is no camera", async () => {
  serve(() => json(captionResult()));
  render(<App />);
  await userEvent.click(screen.getByRole("button", { name: "Webcam" }));
  expect(screen.getByRole("button", { name: "Webcam" })).toHaveAttribute("aria-pressed", "true");
  expect(await screen.findByRole("alert")).toHaveTextContent("no camera access");
  expect(screen.queryByRole("button", { name: "Choose a photo" })).not.toBeInTheDocument();
});
