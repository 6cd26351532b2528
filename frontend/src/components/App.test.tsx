import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { CaptioningBackend, ModelLoad } from "../backend";
import { captionResult, modelInfo } from "../test-data";
import App from "./App";

// The model beside the page, when a test puts one there (ONNX Runtime itself is not run here:
// e2e/site.e2e.test.mjs runs it in Chromium).
const device = vi.hoisted(() => ({ backend: null as CaptioningBackend | null, looked: 0 }));
vi.mock("../device/deviceBackend", () => ({
  MODEL_DIR: "model/",
  findDeviceModel: async () => {
    device.looked += 1;
    return device.backend;
  },
}));

function deviceBackend(tokens = ["a", "cat", "sits"]) {
  const caption = vi.fn(async () => captionResult(tokens));
  device.backend = {
    kind: "device",
    model: { ...modelInfo, generation: { ...modelInfo.generation, num_beams: 1 }, maxNumBeams: 8 },
    caption,
  };
  return caption;
}

/** A static file server: no API behind the page. */
function noServer() {
  const fetchMock = vi.fn(async (_url: string, _init?: RequestInit) => json({ error: "not found" }, 404));
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

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

afterEach(() => {
  vi.unstubAllGlobals();
  device.backend = null;
  device.looked = 0;
});

/** `fetchMock`, with the page.json that `captioner serve` or `captioner export --web` gives. */
function withPageFile(fetchMock: ReturnType<typeof serve>, page: { server: boolean; device_model: boolean }) {
  const inner = fetchMock.getMockImplementation()!;
  fetchMock.mockImplementation(async (url: string, init?: RequestInit) =>
    url.endsWith("/page.json") ? json({ format: "captioner-page", ...page }) : inner(url, init),
  );
  return fetchMock;
}

const apiCalls = (fetchMock: ReturnType<typeof serve>) =>
  fetchMock.mock.calls.filter(([url]) => url.startsWith("/api/"));

test("a chosen photo is captioned, with words, alt text and the model's metrics", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  expect(await screen.findByText(/efficientnet-lite2 encoder, 6-layer decoder/)).toHaveTextContent(
    "CIDEr 0.612",
  );
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());

  const words = await screen.findAllByRole("button", { pressed: false, name: /^(A|dog|runs)$/ });
  expect(words.map((w) => w.textContent)).toEqual(["A", "dog", "runs"]);
  expect(screen.getByRole("group", { name: "Caption words" })).toHaveTextContent(/^A dog runs\.$/);
  expect(screen.getByRole("img", { name: "Photo: a dog runs" })).toBeInTheDocument();
  const form = captionCalls(fetchMock)[0][1]!.body as FormData;
  expect((form.get("file") as File).name).toBe("dog.jpg");
  expect(form.get("num_beams")).toBe("3");
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

test("switching to greedy captions the photo again with num_beams 1", async () => {
  const fetchMock = serve(() => json(captionResult()));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "dog" });
  await userEvent.selectOptions(screen.getByLabelText("Decoding"), "Greedy");
  await waitFor(() => expect(captionCalls(fetchMock)).toHaveLength(2));
  expect((captionCalls(fetchMock)[1][1]!.body as FormData).get("num_beams")).toBe("1");
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

test("decoding starts from the model's own default beam", async () => {
  const fetchMock = vi.fn(async (url: string, _init?: RequestInit) => {
    if (url === "/api/health") return json({ status: "ok", model: "bundled" });
    if (url === "/api/model") return json({ ...modelInfo, generation: { ...modelInfo.generation, num_beams: 4 } });
    if (url === "/api/caption") return json(captionResult());
    return json({ error: "not found" }, 404);
  });
  vi.stubGlobal("fetch", fetchMock);
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  expect(screen.getByLabelText("Decoding")).toHaveDisplayValue("Beam search (4)");
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "dog" });
  const call = fetchMock.mock.calls.find(([url]) => url === "/api/caption")!;
  expect((call[1]!.body as FormData).get("num_beams")).toBe("4");
});

test("with no server, the model beside the page captions on this device", async () => {
  const fetchMock = noServer();
  const caption = deviceBackend();
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  expect(screen.queryByRole("group", { name: "Where to caption" })).not.toBeInTheDocument();
  expect(screen.getByLabelText("Decoding")).toHaveDisplayValue("Greedy"); // this model's default
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "cat" });
  expect(caption).toHaveBeenCalledWith(expect.any(File), { numBeams: 1 }, expect.any(AbortSignal));
  expect(screen.getByText(/ms on this device/)).toBeInTheDocument();
  expect(screen.queryByRole("alert")).not.toBeInTheDocument();
  expect(fetchMock.mock.calls.filter(([, init]) => init?.method === "POST")).toHaveLength(0);
});

test("with a server and a model beside the page, a switch chooses where", async () => {
  const fetchMock = serve(() => json(captionResult()));
  const onDevice = deviceBackend();
  render(<App />);
  const where = await screen.findByRole("group", { name: "Where to caption" });
  expect(within(where).getByRole("button", { name: "Server" })).toHaveAttribute("aria-pressed", "true");
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "dog" });
  expect(captionCalls(fetchMock)).toHaveLength(1);

  await userEvent.click(within(where).getByRole("button", { name: "On this device" }));
  await screen.findByRole("button", { name: "cat" }); // the same photo, captioned again here
  expect(onDevice).toHaveBeenCalledTimes(1);
  expect(captionCalls(fetchMock)).toHaveLength(1);
  expect(within(where).getByRole("button", { name: "On this device" })).toHaveAttribute("aria-pressed", "true");
});

test("with neither a server nor a model, the page says what is missing", async () => {
  noServer();
  render(<App />);
  expect(await screen.findByRole("alert")).toHaveTextContent(
    "No captioning server answers here, and no model came with this page",
  );
});

test("a static site's page.json keeps the page from asking for an API", async () => {
  const fetchMock = withPageFile(noServer(), { server: false, device_model: true });
  deviceBackend();
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("button", { name: "cat" });
  expect(apiCalls(fetchMock)).toEqual([]);
  expect(screen.queryByRole("alert")).not.toBeInTheDocument();
});

test("the served page's page.json keeps it from looking for a model it does not have", async () => {
  withPageFile(serve(() => json(captionResult())), { server: true, device_model: false });
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  expect(device.looked).toBe(0);
});

test("the page's title names the model", async () => {
  serve(() => json(captionResult()));
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  await waitFor(() => expect(document.title).toBe("captioner: efficientnet-lite2 encoder, 6-layer decoder"));
});

test("Copy puts the caption, as a sentence, on the clipboard and says so", async () => {
  serve(() => json(captionResult()));
  const writeText = vi.fn(async (_text: string) => {});
  vi.stubGlobal("navigator", { ...navigator, clipboard: { writeText } });
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await userEvent.click(await screen.findByRole("button", { name: "Copy caption" }));
  expect(writeText).toHaveBeenCalledWith("A dog runs.");
  expect(screen.getByRole("button", { name: "Copied" })).toBeInTheDocument();
});

test("where the Clipboard API is missing, Copy falls back to the copy command", async () => {
  serve(() => json(captionResult()));
  vi.stubGlobal("navigator", { ...navigator, clipboard: undefined });
  let copied: string | null = null;
  const execCommand = document.execCommand;
  onTestFinished(() => void (document.execCommand = execCommand));
  document.execCommand = vi.fn(() => {
    copied = document.querySelector("textarea")?.value ?? null;
    return true;
  });
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await userEvent.click(await screen.findByRole("button", { name: "Copy caption" }));
  expect(document.execCommand).toHaveBeenCalledWith("copy");
  expect(copied).toBe("A dog runs.");
  expect(screen.getByRole("button", { name: "Copied" })).toBeInTheDocument();
});

test("the webcam view does not show the last photo as a captured frame", async () => {
  serve(() => json(captionResult()));
  render(<App />);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  await screen.findByRole("img", { name: "Photo: a dog runs" });
  await userEvent.click(screen.getByRole("button", { name: "Webcam" }));
  expect(screen.queryByRole("img")).not.toBeInTheDocument();
  expect(screen.queryByText("Last captured frame")).not.toBeInTheDocument();
  expect(screen.queryByRole("group", { name: "Caption words" })).not.toBeInTheDocument();
  await userEvent.click(screen.getByRole("button", { name: "Image" }));
  expect(screen.getByRole("img", { name: "Photo: a dog runs" })).toBeInTheDocument();
});

test("on the device, the model's download shows as a progress bar, and its load time apart", async () => {
  noServer();
  const listeners = new Set<(load: ModelLoad) => void>();
  const emit = (load: ModelLoad) => listeners.forEach((listener) => listener(load));
  let answer: (result: ReturnType<typeof captionResult>) => void = () => {};
  deviceBackend();
  device.backend = {
    ...device.backend!,
    caption: () => new Promise((resolve) => (answer = resolve)),
    watchLoad(listener) {
      listeners.add(listener);
      listener({ phase: "idle" });
      return () => listeners.delete(listener);
    },
  };
  render(<App />);
  await screen.findByText(/efficientnet-lite2 encoder/);
  await userEvent.upload(screen.getByLabelText("Photo file"), photo());
  act(() => emit({ phase: "downloading", loadedBytes: 5e6, totalBytes: null }));
  const bar = screen.getByRole("progressbar", { name: "Loading the model" });
  expect(bar).not.toHaveAttribute("aria-valuenow"); // sizes not known yet
  act(() => emit({ phase: "downloading", loadedBytes: 5e6, totalBytes: 20e6 }));
  expect(bar).toHaveAttribute("aria-valuenow", "25");
  expect(screen.getByRole("status")).toHaveTextContent("Downloading the model: 5.0 of 20.0 MB");
  act(() => emit({ phase: "starting", loadedBytes: 20e6 }));
  expect(screen.getByRole("status")).toHaveTextContent("Starting the model (20.0 MB)");
  act(() => emit({ phase: "ready", loadedBytes: 20e6, ms: 1500 }));
  expect(screen.queryByRole("progressbar")).not.toBeInTheDocument();
  await act(async () => answer({ ...captionResult(), timings_ms: { load: 1400, total: 120 } }));
  expect(screen.getByText(/120 ms on this device · model \(20\.0 MB\) loaded in 1\.5 s/)).toBeInTheDocument();
});
