// Shared by the end-to-end tests: ports, processes, Chromium, and page helpers.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

// The browser, or where CHROME_PATH says (`make test-frontend` stops in one line without it).
export const CHROMIUM = process.env.CHROME_PATH || "/usr/bin/chromium";
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
// The data set beside the checkout, or where E2E_FLICKR8K says (a git worktree elsewhere).
const FLICKR8K = join(process.env.E2E_FLICKR8K ?? join(ROOT, "../shared/datasets/flickr8k"), "images");
// The repository's venv, or the Python CAPTIONER_PYTHON names (with captioner importable from it).
export const PYTHON = process.env.CAPTIONER_PYTHON ?? join(ROOT, ".venv/bin/python");
// Flickr8k photos where the data set is here; else (or with E2E_GENERATED_PHOTOS=1) photos drawn
// by Pillow, so the tests run on a machine without the data too.
export const PHOTOS =
  existsSync(FLICKR8K) && !process.env.E2E_GENERATED_PHOTOS ? FLICKR8K : drawPhotos(3);

/** Runs `captioner args...` with `PYTHON`. */
export function spawnCaptioner(args, options) {
  return spawn(PYTHON, ["-m", "captioner", ...args], options);
}

export function runCaptioner(args) {
  return spawnSync(PYTHON, ["-m", "captioner", ...args], { encoding: "utf8" });
}

/** `text` as `captioner caption --sentence-case` writes it (the Python rule itself). */
export function pythonSentence(text) {
  const finish = "import sys\nfrom captioner.collection.job import CollectionConfig\n" +
    "print(CollectionConfig(sentence_case=True).finish_text(sys.argv[1]), end='')";
  const result = spawnSync(PYTHON, ["-c", finish, text], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`the sentence rule failed: ${result.stderr}`);
  return result.stdout;
}
export const SCREENSHOTS = process.env.E2E_SCREENSHOTS; // a folder to save what the page looked like
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
];

/** The first `count` photos by name. */
export function photos(count) {
  return readdirSync(PHOTOS)
    .filter((f) => f.endsWith(".jpg"))
    .sort()
    .slice(0, count);
}

export function freePort() {
  return new Promise((done) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** Wait until `url` answers 200, failing early if `process` exits. */
export async function waitForUrl(url, process, seconds) {
  for (let i = 0; i < seconds * 4; i++) {
    if (process.exitCode !== null) throw new Error(`${process.spawnfile} exited with ${process.exitCode}`);
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url} did not answer within ${seconds} s`);
}

/** Chromium with a profile in `profile`, allowed the clipboard; `problems` gathers what the
 * page logs as going wrong. */
export async function launchChromium(profile) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1280, height: 800 },
    permissions: ["clipboard-read", "clipboard-write"],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  return { context, page, problems: watchProblems(page) };
}

/** What `page` logs as going wrong: console errors, uncaught errors, failed requests and HTTP
 * errors, one line each. Requests the page cancels itself (a caption nobody waits for any more,
 * a navigation away) are no problem. */
function watchProblems(page) {
  let seen = [];
  page.on("console", (message) => message.type() === "error" && seen.push(`console error: ${message.text()}`));
  page.on("pageerror", (error) => seen.push(`uncaught: ${error.message}`));
  page.on("requestfailed", (request) => {
    const reason = request.failure()?.errorText;
    if (reason !== "net::ERR_ABORTED") seen.push(`request failed: ${request.url()} ${reason}`);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) seen.push(`HTTP ${response.status()}: ${response.url()}`);
  });
  return {
    /** Drops the problems matching `patterns`, each of which must match one. */
    expect(...patterns) {
      for (const pattern of patterns) {
        assert.ok(seen.some((line) => pattern.test(line)), `expected a problem like ${pattern}, saw ${seen}`);
        seen = seen.filter((line) => !pattern.test(line));
      }
    },
    /** Fails on any problem seen since the last call. */
    assertNone() {
      const found = seen;
      seen = [];
      assert.deepEqual(found, [], "the page logged problems");
    },
  };
}

/** Drop `bytes` as a file onto the page, as a drag from the desktop would. */
export function dropFile(page, bytes, name, type) {
  return page.evaluate(
    ({ base64, name, type }) => {
      const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([data], name, { type }));
      for (const kind of ["dragenter", "dragover", "drop"]) {
        const event = new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: transfer });
        document.body.dispatchEvent(event);
      }
    },
    { base64: Buffer.from(bytes).toString("base64"), name, type },
  );
}

/** Paste `bytes` as a file, as Ctrl+V with an image on the clipboard would. */
export function pasteFile(page, bytes, name, type) {
  return page.evaluate(
    ({ base64, name, type }) => {
      const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([data], name, { type }));
      window.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
    },
    { base64: Buffer.from(bytes).toString("base64"), name, type },
  );
}

/** Drop a text file named like a photo on the page at `url`: it must say it can't caption it. */
export async function dropNotAnImage(page, url) {
  await page.goto(url);
  // The page asks page.json where it runs before it takes a file: drop only once that is done.
  await page.waitForLoadState("networkidle");
  await dropFile(page, Buffer.from("just some text"), "notes.jpg", "image/jpeg");
  await page.getByText(/That file can't be captioned: .*not an image/).waitFor();
}

/** How many pixels of the heatmap canvas are painted (alpha above zero). */
export function paintedPixels(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector("[data-testid=heatmap]");
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) painted += data[i] > 0 ? 1 : 0;
    return painted;
  });
}

const photoAlt = (page) => page.locator("figure img").getAttribute("alt");

/** Do `action` (which shows a new photo), and answer the caption the page then shows for it. */
export async function captionOfNewPhoto(page, action, timeout = 120_000) {
  const before = await page.evaluate(() => document.querySelector("figure img")?.src ?? null);
  await action();
  await page.waitForFunction(
    (before) => {
      const image = document.querySelector("figure img");
      return image && image.src !== before && image.alt.startsWith("Photo: ");
    },
    before,
    { timeout },
  );
  return (await photoAlt(page)).slice("Photo: ".length);
}

/** Do `action` (which captions the same photo again), and answer the new caption. */
export async function captionAgain(page, action, timeout = 120_000) {
  await action();
  await page.getByRole("status").waitFor({ state: "visible", timeout });
  await page.getByRole("status").waitFor({ state: "detached", timeout });
  return (await photoAlt(page)).slice("Photo: ".length);
}

/** The server's caption of a photo file, by the API. */
export async function serverCaption(url, bytes, name, numBeams) {
  const form = new FormData();
  form.append("file", new Blob([bytes]), name);
  form.append("num_beams", String(numBeams));
  const response = await fetch(`${url}/api/caption`, { method: "POST", body: form });
  if (!response.ok) throw new Error(`${url}/api/caption answered ${response.status}`);
  return response.json();
}

export async function screenshot(page, name) {
  if (SCREENSHOTS) await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** A folder of `count` 500x375 JPEGs: gradients with a few shapes, different for each. */
function drawPhotos(count) {
  const folder = mkdtempSync(join(tmpdir(), "captioner-e2e-photos-"));
  const draw = `
import sys
from PIL import Image, ImageDraw
for i in range(${count}):
    image = Image.linear_gradient("L").resize((500, 375)).convert("RGB")
    pen = ImageDraw.Draw(image)
    pen.ellipse((60 + 40 * i, 80, 260 + 40 * i, 300), fill=(200, 40 * i, 30))
    pen.rectangle((300, 40 + 30 * i, 460, 200), fill=(20, 120, 200 - 60 * i))
    image.save(f"{sys.argv[1]}/generated-{i}.jpg", quality=90)
`;
  const result = spawnSync(PYTHON, ["-c", draw, folder]);
  if (result.status !== 0) throw new Error(`drawing the test photos failed: ${result.stderr}`);
  return folder;
}
