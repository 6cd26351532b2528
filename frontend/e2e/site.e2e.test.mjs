// End to end: the static site `captioner export --web` writes, captioning in headless Chromium
// with ONNX Runtime Web, served by `python -m http.server` with no API behind it; and the same
// site under `captioner serve`, which offers both. The bundled model, so the speed and size
// printed are the real ones. Skips without Chromium or the Flickr8k photos.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { spawn } from "node:child_process";
import { after, afterEach, before, describe, test } from "node:test";
import {
  CHROMIUM,
  dropFile,
  dropNotAnImage,
  freePort,
  launchChromium,
  paintedPixels,
  pasteFile,
  PHOTOS,
  photos,
  PYTHON,
  pythonSentence,
  ROOT,
  runCaptioner,
  screenshot,
  captionAgain,
  captionOfNewPhoto,
  serverCaption,
  spawnCaptioner,
  waitForUrl,
} from "./helpers.mjs";

const BUNDLED = join(ROOT, "src/captioner/pretrained/flickr8k-effnet");
const PICTURES = photos(3);
const skip =
  (!existsSync(CHROMIUM) && `${CHROMIUM} is missing`) ||
  (PICTURES.length === 0 && `no photos at ${PHOTOS}`);

/** The bytes of every file under `directory`: as stored, and with each .gz file decompressed
 * (as the page does in the browser). */
function sizeOf(directory) {
  const files = readdirSync(directory, { recursive: true })
    .map((name) => join(directory, name))
    .filter((path) => statSync(path).isFile());
  const stored = files.reduce((sum, path) => sum + statSync(path).size, 0);
  const decompressed = files.reduce(
    (sum, path) => sum + (path.endsWith(".gz") ? gunzipSync(readFileSync(path)).length : statSync(path).size),
    0,
  );
  return { stored, decompressed };
}

describe("the exported static site", { skip }, () => {
  let work, site, staticServer, apiServer, context, page, problems, staticUrl, apiUrl;
  const read = (name) => readFileSync(join(PHOTOS, name));

  before(async () => {
    work = mkdtempSync(join(tmpdir(), "captioner-site-e2e-"));
    site = join(work, "site");
    const exported = runCaptioner(["export", BUNDLED, "--web", site]);
    assert.equal(exported.status, 0, exported.stderr);
    const [staticPort, apiPort] = [await freePort(), await freePort()];
    staticUrl = `http://127.0.0.1:${staticPort}`;
    apiUrl = `http://127.0.0.1:${apiPort}`;
    staticServer = spawn(
      PYTHON,
      ["-m", "http.server", String(staticPort), "--bind", "127.0.0.1", "--directory", site],
      { stdio: ["ignore", "ignore", "ignore"] },
    );
    apiServer = spawnCaptioner(
      ["serve", "--model", BUNDLED, "--port", String(apiPort), "--page-dir", site],
      { stdio: ["ignore", "ignore", "inherit"] },
    );
    await waitForUrl(`${staticUrl}/index.html`, staticServer, 30);
    await waitForUrl(`${apiUrl}/api/health`, apiServer, 120);
    ({ context, page, problems } = await launchChromium(join(work, "profile")));
  });

  // No console errors or failed requests: the static site asks for no API, the served one for
  // nothing it lacks.
  afterEach(() => problems?.assertNone());

  after(async () => {
    await context?.close();
    staticServer?.kill();
    apiServer?.kill();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("its size", () => {
    const { stored, decompressed } = sizeOf(site);
    console.log(
      `# site size: ${(stored / 1e6).toFixed(1)} MB on disk (target <= 40 MB), ` +
        `${(decompressed / 1e6).toFixed(1)} MB decompressed in the browser`,
    );
    assert.ok(existsSync(join(site, "model/captioner.json")));
    assert.ok(stored <= 40e6, `the site is ${(stored / 1e6).toFixed(1)} MB`);
  });

  test("a dropped photo is captioned in the browser, as the server captions it", { timeout: 240_000 }, async () => {
    const sent = [];
    page.on("request", (r) => r.method() !== "GET" && sent.push(r.url()));
    await page.goto(staticUrl);
    await page.getByText(/efficientnet-lite2 encoder, 3-layer decoder/).waitFor();
    // No server here: no switch and no complaint.
    assert.equal(await page.getByRole("group", { name: "Where to caption" }).count(), 0);
    assert.equal(await page.getByRole("alert").count(), 0);

    for (const [i, name] of PICTURES.entries()) {
      const server = await serverCaption(apiUrl, read(name), name, 3); // the model's default beam
      // The first caption downloads and starts the model, with a progress bar.
      const progress = i === 0 && page.getByRole("progressbar", { name: "Loading the model" }).waitFor();
      const shown = await captionOfNewPhoto(page, () => dropFile(page, read(name), name, "image/jpeg"));
      await progress;
      if (i === 0) {
        const timing = await page.getByText(/ms on this device/).textContent();
        console.log(`# first caption in the browser: ${timing.match(/\d+ ms on this device.*/)[0]}`);
        assert.match(timing, /\d+ ms on this device · model \(\d+\.\d MB\) loaded in \d+\.\d s/);
      }
      console.log(`# ${name}, beam 3: browser "${shown}", server "${server.caption}"`);
      assert.equal(shown, server.caption, `beam 3 on ${name}`);
    }
    const last = PICTURES.at(-1);
    const greedy = await serverCaption(apiUrl, read(last), last, 1);
    const shown = await captionAgain(page, () =>
      page.getByLabel("Decoding").selectOption({ label: "Greedy" }),
    );
    assert.equal(shown, greedy.caption, `greedy on ${last}`);
    const words = page.getByRole("group", { name: "Caption words" }).getByRole("button");
    const lower = (texts) => texts.map((t) => t.toLowerCase());
    assert.deepEqual(lower(await words.allTextContents()), lower(greedy.tokens));
    const sentence = pythonSentence(greedy.caption);
    assert.equal(await page.getByRole("group", { name: "Caption words" }).textContent(), sentence);
    await page.getByRole("button", { name: "Copy caption" }).click();
    await page.getByRole("button", { name: "Copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), sentence);

    assert.equal(await paintedPixels(page), 0, "no heatmap before hovering");
    await words.nth(1).hover();
    assert.equal(await page.getByTestId("heatmap").getAttribute("data-token"), "1");
    assert.ok((await paintedPixels(page)) > 256 * 256 * 0.9, "the heatmap covers the crop");
    await screenshot(page, "site-hover");
    assert.deepEqual(sent, [], "the photo never left the browser");
  });

  test("a reload does not download the model again: the browser's HTTP cache keeps it", { timeout: 120_000 }, async () => {
    const [name] = PICTURES;
    for (const load of ["first", "again"]) {
      await (load === "first" ? page.goto(staticUrl) : page.reload());
      await captionOfNewPhoto(page, () => dropFile(page, read(name), name, "image/jpeg"));
    }
    const fetched = await page.evaluate(() =>
      performance
        .getEntriesByType("resource")
        .filter((entry) => /\.(onnx|wasm)(\.gz)?$/.test(entry.name))
        .map(({ name, transferSize, encodedBodySize }) => ({ name, transferSize, encodedBodySize })),
    );
    assert.equal(fetched.length, 4, "three graphs and ONNX Runtime's WASM"); // captioner.json aside
    const sum = (key) => fetched.reduce((total, entry) => total + entry[key], 0);
    console.log(
      `# after a reload: ${sum("transferSize")} bytes of the model's ` +
        `${(sum("encodedBodySize") / 1e6).toFixed(1)} MB came over the network`,
    );
    for (const { name, transferSize, encodedBodySize } of fetched) {
      // From the cache, or a 304 revalidation: headers at most, never the body again.
      assert.ok(transferSize < 1000 && encodedBodySize > 100_000, `${name}: ${transferSize} bytes came over`);
    }
  });

  test("a pasted photo and a picked one are captioned too", { timeout: 120_000 }, async () => {
    await page.goto(staticUrl);
    const [first, second] = PICTURES;
    const pasted = await captionOfNewPhoto(page, () => pasteFile(page, read(first), first, "image/jpeg"));
    const picked = await captionOfNewPhoto(page, () =>
      page.getByLabel("Photo file").setInputFiles({ name: second, mimeType: "image/jpeg", buffer: read(second) }),
    );
    assert.ok(pasted.length > 0 && picked.length > 0);
  });

  test("a file that is not an image gets a clear error", { timeout: 60_000 }, async () => {
    await dropNotAnImage(page, staticUrl);
  });

  test("live mode captions webcam frames one after another", { timeout: 120_000 }, async () => {
    await page.goto(staticUrl);
    await page.getByRole("button", { name: "Webcam" }).click();
    await page.getByLabel("Decoding").selectOption({ label: "Greedy" });
    const capture = page.getByRole("button", { name: "Capture frame" });
    await captionOfNewPhoto(page, () => capture.click()); // and the model is loaded
    await page.getByRole("switch").check();
    await new Promise((r) => setTimeout(r, 15_000));
    const rate = await page.getByTestId("live-rate").textContent();
    await page.getByRole("switch").uncheck();
    // A peer measured in the same run (the machine may be busy): the server, greedy, one photo
    // after another.
    const frame = read(PICTURES[0]);
    const started = performance.now();
    for (let i = 0; i < 10; i++) await serverCaption(apiUrl, frame, PICTURES[0], 1);
    const serverRate = (10_000 / (performance.now() - started)).toFixed(1);
    console.log(
      `# live mode, greedy, in the browser: ${rate} (target >= 3 a second on 2 cores); ` +
        `the server in the same run: ${serverRate} a second`,
    );
    const captions = Number(rate.split(" ")[0]);
    assert.ok(captions >= 3, `live mode wrote ${captions} captions in 15 s`);
    await screenshot(page, "site-webcam");
  });

  test("under captioner serve the page offers the device and the server", { timeout: 180_000 }, async () => {
    const [name] = PICTURES;
    await page.goto(apiUrl);
    const where = page.getByRole("group", { name: "Where to caption" });
    await where.waitFor();
    assert.equal(await where.getByRole("button", { name: "Server" }).getAttribute("aria-pressed"), "true");
    let posted = 0;
    page.on("request", (r) => r.url().endsWith("/api/caption") && posted++);
    const onServer = await captionOfNewPhoto(page, () => dropFile(page, read(name), name, "image/jpeg"));
    assert.equal(posted, 1);
    const onDevice = await captionAgain(page, () =>
      where.getByRole("button", { name: "On this device" }).click(),
    );
    assert.equal(onDevice, onServer);
    assert.equal(posted, 1, "captioned on the device, not sent");
    assert.match(await page.getByText(/ms on this device/).textContent(), /on this device/);
  });
});
